"""Token and cost estimates made without calling a model, for ``--dry-run`` and the budget.

Input tokens are a quarter of the characters of the prompts each node would send (the
real templates with the ticket's text), plus a fixed allowance per image. Output tokens
are each node's ``max_tokens``, so estimates are an upper bound on output. Prices come
from the graph's ``price`` table. The mini path is the triage call (plus the drafting
call when triage is a classifier that cannot write); an escalated ticket adds the
flagship call, whose prompt also quotes the mini tier's draft.
"""

from __future__ import annotations

from dataclasses import dataclass

from triagegate.models.base import Capabilities
from triagegate.prompts import GRAPH_NODES, Template
from triagegate.replies import answer_request, escalate_request, triage_request
from triagegate.spec import GraphSpec, LoadedSpec
from triagegate.types import Ticket, Triage

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 765
"""Rough input tokens per attached image (a high-detail 512-pixel image on common APIs)."""
_PROBE = "x"


@dataclass(frozen=True, slots=True)
class TicketEstimate:
    """Tokens and USD for one ticket, answered by the mini tier or escalated."""

    mini_input_tokens: int
    mini_output_tokens: int
    flagship_input_tokens: int
    flagship_output_tokens: int
    mini_usd: float
    escalated_usd: float

    def expected_usd(self, escalation_rate: float) -> float:
        return self.mini_usd + escalation_rate * (self.escalated_usd - self.mini_usd)


def graph_hash(loaded: LoadedSpec, templates: dict[str, Template]) -> str:
    """The hash :class:`~triagegate.pipeline.Pipeline` gives this graph, without building backends."""
    return loaded.content_hash({node: t.text for node, t in templates.items()})


class Estimator:
    """Per-ticket estimates; the fixed part of each prompt is rendered once."""

    def __init__(self, spec: GraphSpec, templates: dict[str, Template]) -> None:
        self.spec = spec
        nodes = spec.nodes
        self._bindings = {node: spec.models[getattr(nodes, node).model] for node in GRAPH_NODES}
        triage_binding = self._bindings["triage"]
        self._triage_chats = triage_binding.backend != "classifier"
        caps = Capabilities(
            chat=True,
            vision=triage_binding.capabilities.vision,
            logprobs=triage_binding.capabilities.logprobs,
        )
        probe = Ticket(id="probe", text=_PROBE)
        draft = Triage(
            category=spec.taxonomy.category_names[0],
            priority=spec.taxonomy.default_priority,
            confidence=0.5,
            confidence_method="verbalized",
        )
        self._base = {
            "triage": _chars(
                triage_request(templates["triage"], spec, probe, [], caps, nodes.triage).messages
            ),
            "answer": _chars(answer_request(templates["answer"], spec, probe, draft, []).messages),
            "escalate": _chars(
                escalate_request(templates["escalate"], spec, probe, draft, [], nodes.escalate).messages
            ),
        }

    def ticket(self, ticket: Ticket) -> TicketEstimate:
        nodes = self.spec.nodes
        extra = len(ticket.text) - len(_PROBE) + (len(ticket.subject) + 10 if ticket.subject else 0)
        images = IMAGE_TOKENS * len(ticket.attachments)

        def tokens(node: str) -> int:
            return -(-(self._base[node] + extra) // CHARS_PER_TOKEN) + images

        calls: list[tuple[str, int, int]] = []
        if self._triage_chats:
            calls.append(("triage", tokens("triage"), nodes.triage.max_tokens))
        else:
            calls.append(("triage", -(-len(ticket.text) // CHARS_PER_TOKEN), 0))
            calls.append(("answer", tokens("answer"), nodes.answer.max_tokens))
        mini_in = sum(c[1] for c in calls)
        mini_out = sum(c[2] for c in calls)
        mini_usd = sum(self._bindings[node].price.cost(i, o) for node, i, o in calls)
        quoted_draft = nodes.triage.max_tokens if self._triage_chats else nodes.answer.max_tokens
        flag_in = tokens("escalate") + quoted_draft
        flag_out = nodes.escalate.max_tokens
        flag_usd = self._bindings["escalate"].price.cost(flag_in, flag_out)
        return TicketEstimate(
            mini_input_tokens=mini_in,
            mini_output_tokens=mini_out,
            flagship_input_tokens=flag_in,
            flagship_output_tokens=flag_out,
            mini_usd=mini_usd,
            escalated_usd=mini_usd + flag_usd,
        )


@dataclass
class EstimateTotals:
    """Sums of :class:`TicketEstimate` over a batch."""

    tickets: int = 0
    mini_input_tokens: int = 0
    mini_output_tokens: int = 0
    flagship_input_tokens: int = 0
    flagship_output_tokens: int = 0
    mini_usd: float = 0.0
    escalated_usd: float = 0.0

    def add(self, estimate: TicketEstimate) -> None:
        self.tickets += 1
        self.mini_input_tokens += estimate.mini_input_tokens
        self.mini_output_tokens += estimate.mini_output_tokens
        self.flagship_input_tokens += estimate.flagship_input_tokens
        self.flagship_output_tokens += estimate.flagship_output_tokens
        self.mini_usd += estimate.mini_usd
        self.escalated_usd += estimate.escalated_usd

    def as_dict(self, escalation_rate: float) -> dict[str, object]:
        expected = self.mini_usd + escalation_rate * (self.escalated_usd - self.mini_usd)
        return {
            "tickets": self.tickets,
            "assumed_escalation_rate": escalation_rate,
            "tokens": {
                "mini_input": self.mini_input_tokens,
                "mini_output_max": self.mini_output_tokens,
                "flagship_input_if_all_escalate": self.flagship_input_tokens,
                "flagship_output_max_if_all_escalate": self.flagship_output_tokens,
            },
            "cost_usd": {
                "no_escalation": self.mini_usd,
                "expected": expected,
                "all_escalate": self.escalated_usd,
                "expected_per_1000": expected / self.tickets * 1000 if self.tickets else 0.0,
            },
        }


def _chars(messages: tuple[object, ...]) -> int:
    return sum(len(getattr(m, "text", "")) for m in messages)
