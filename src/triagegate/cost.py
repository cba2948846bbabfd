"""Token and cost estimates made without calling a model: one rule for every estimate.

``batch --dry-run`` and the batch budget estimate each ticket (:meth:`Estimator.ticket`);
``eval`` and ``calibrate`` estimate a ticket of mean length on each route
(:meth:`Estimator.routes`). Both come from the same arithmetic, so the numbers agree:

* input tokens are the characters of the prompts each node would send (the graph's own
  templates with the ticket's text) divided by :data:`CHARS_PER_TOKEN`, rounded up, plus
  :data:`IMAGE_TOKENS` per attached image;
* output tokens are each node's ``max_tokens``, so every estimate is an upper bound on output;
* prices come from the graph's ``price`` table.

The routes follow the graph. A ticket the mini tier keeps costs the triage call, plus the
drafting call when triage is a classifier (a chat model drafts its answer in the triage
reply). An escalated ticket costs the triage call and the flagship call, whose prompt
quotes the mini tier's triage, draft answer included when triage drafts; the drafting call
does not run on that path. A classifier call counts no tokens (it reports none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field

from triagegate.models.base import Capabilities, Message
from triagegate.prompts import GRAPH_NODES, Template
from triagegate.replies import answer_request, escalate_request, triage_request
from triagegate.spec import GraphSpec
from triagegate.types import Ticket, Triage

CHARS_PER_TOKEN = 4
"""Characters per token assumed for every estimate (English text on common tokenizers)."""
IMAGE_TOKENS = 765
"""Rough input tokens per attached image (a high-detail 512-pixel image on common APIs)."""
_PROBE = "x"


def tokens_for_chars(chars: float) -> int:
    """Input tokens assumed for ``chars`` characters of prompt (0 for none)."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


class CostEstimate(BaseModel):
    """Estimated USD per ticket on each route, and the assumptions behind the numbers."""

    kept_usd: float
    """Mini triage, plus drafting when the triage model cannot write the answer itself."""
    escalated_usd: float
    """Mini triage plus the flagship's escalation call."""
    tokens: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """``{node: (input_tokens, output_tokens)}`` assumed per call."""
    basis: str = ""

    def per_1000(self, coverage: float) -> float:
        """Estimated USD for 1,000 tickets when ``coverage`` of them stay with the mini tier."""
        return 1000 * (coverage * self.kept_usd + (1 - coverage) * self.escalated_usd)


@dataclass(frozen=True, slots=True)
class TicketEstimate:
    """Tokens and USD for one ticket, answered by the mini tier or escalated."""

    mini_input_tokens: int
    mini_output_tokens: int
    flagship_input_tokens: int
    flagship_output_tokens: int
    mini_usd: float
    """The ticket kept by the mini tier."""
    escalated_usd: float
    """The ticket escalated: the triage call and the flagship's."""

    def expected_usd(self, escalation_rate: float) -> float:
        return self.mini_usd + escalation_rate * (self.escalated_usd - self.mini_usd)


class Estimator:
    """Estimates for one graph; the fixed part of each prompt is rendered once.

    ``triage`` is the triage backend's capabilities when it is known (``eval`` and
    ``calibrate`` build it; a replayed alias presents the recorded ones). Without it, the
    graph's binding decides: a ``classifier`` backend classifies, anything else chats.
    """

    def __init__(
        self, spec: GraphSpec, templates: dict[str, Template], *, triage: Capabilities | None = None
    ) -> None:
        self.spec = spec
        nodes = spec.nodes
        self._bindings = {node: spec.models[getattr(nodes, node).model] for node in GRAPH_NODES}
        binding = self._bindings["triage"]
        if triage is None:
            triage = Capabilities(
                chat=binding.backend != "classifier",
                vision=binding.capabilities.vision,
                logprobs=binding.capabilities.logprobs,
            )
        self.triage_chats = triage.chat
        probe = Ticket(id="probe", text=_PROBE)
        draft = Triage(
            category=spec.taxonomy.category_names[0],
            priority=spec.taxonomy.default_priority,
            confidence=0.5,
            confidence_method="verbalized",
        )
        chat_caps = Capabilities(chat=True, vision=triage.vision, logprobs=triage.logprobs)
        self._base = {
            "triage": _chars(
                triage_request(templates["triage"], spec, probe, [], chat_caps, nodes.triage).messages
            ),
            "answer": _chars(answer_request(templates["answer"], spec, probe, draft, []).messages),
            "escalate": _chars(
                escalate_request(templates["escalate"], spec, probe, draft, [], nodes.escalate).messages
            ),
        }

    def _calls(self, extra_chars: float, images: int) -> dict[str, tuple[int, int]]:
        """``{node: (input, output)}`` tokens per call for a ticket ``extra_chars`` longer than the probe."""
        nodes = self.spec.nodes

        def tokens(node: str) -> int:
            return tokens_for_chars(self._base[node] + extra_chars) + IMAGE_TOKENS * images

        quoted_draft = nodes.triage.max_tokens if self.triage_chats else 0
        return {
            "triage": (tokens("triage"), nodes.triage.max_tokens) if self.triage_chats else (0, 0),
            "answer": (tokens("answer"), nodes.answer.max_tokens),
            "escalate": (tokens("escalate") + quoted_draft, nodes.escalate.max_tokens),
        }

    def _usd(self, node: str, tokens: tuple[int, int]) -> float:
        return self._bindings[node].price.cost(*tokens)

    def ticket(self, ticket: Ticket) -> TicketEstimate:
        """Tokens and USD for ``ticket`` on each route (``batch --dry-run`` and the budget)."""
        extra = len(ticket.text) - len(_PROBE) + (len(ticket.subject) + 10 if ticket.subject else 0)
        calls = self._calls(extra, len(ticket.attachments))
        kept = ["triage"] if self.triage_chats else ["triage", "answer"]
        triage_usd = self._usd("triage", calls["triage"])
        flag_in, flag_out = calls["escalate"]
        return TicketEstimate(
            mini_input_tokens=sum(calls[n][0] for n in kept),
            mini_output_tokens=sum(calls[n][1] for n in kept),
            flagship_input_tokens=flag_in,
            flagship_output_tokens=flag_out,
            mini_usd=sum(self._usd(n, calls[n]) for n in kept),
            escalated_usd=triage_usd + self._usd("escalate", calls["escalate"]),
        )

    def routes(self, mean_text_chars: float) -> CostEstimate:
        """USD per ticket on each route for text-only tickets of ``mean_text_chars`` (``eval``, ``calibrate``)."""
        calls = self._calls(mean_text_chars - len(_PROBE), 0)
        usd = {node: self._usd(node, tokens) for node, tokens in calls.items()}
        if self.triage_chats:
            calls.pop("answer")
        basis = (
            f"estimate: input tokens = (prompt + mean ticket of {mean_text_chars:.0f} chars) / {CHARS_PER_TOKEN}; "
            "output tokens = each node's max_tokens (an upper bound); prices from the graph's models"
        )
        return CostEstimate(
            kept_usd=usd["triage"] + (0.0 if self.triage_chats else usd["answer"]),
            escalated_usd=usd["triage"] + usd["escalate"],
            tokens=calls,
            basis=basis,
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


def _chars(messages: tuple[Message, ...]) -> int:
    return sum(len(m.text) for m in messages)
