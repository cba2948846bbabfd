"""Token and cost estimates made without calling a model: one rule for every estimate.

``batch --dry-run`` and the batch budget estimate each ticket (:meth:`Estimator.ticket`);
``eval`` and ``calibrate`` estimate a ticket of mean length on each route
(:meth:`Estimator.routes`). Both come from the same arithmetic, so the numbers agree:

* input tokens are the characters of the prompts each node would send (the graph's own
  templates with the ticket's text) divided by :data:`CHARS_PER_TOKEN`, rounded up, plus
  :data:`IMAGE_TOKENS` per attached image;
* output tokens are each node's ``max_tokens``, so every estimate is an upper bound on output;
* prices come from the graph's ``price`` table.

The routes follow the cascade. A ticket the first tier keeps costs that tier's call, plus
its drafting call when the tier's model is a classifier (a chat model drafts its answer in
the triage reply). An escalated ticket is costed along the whole cascade, as an upper
bound: the first tier's call, the triage call of every tier between, and the last tier's,
whose prompt quotes the previous tier's triage (draft answer included when that tier
chats); drafting calls do not run on that path. A classifier call counts no tokens (it
reports none). ``mini`` in the field names is the first tier, ``flagship`` the later ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field

from triagegate.models.base import Capabilities, Message
from triagegate.prompts import DRAFT, Template, articles_block
from triagegate.replies import answer_request, escalate_request, triage_request
from triagegate.spec import GraphSpec, ModelBinding, NodeSpec
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
    """The first tier's call, plus drafting when its model cannot write the answer itself."""
    escalated_usd: float
    """The first tier's call plus every later tier's, to the last (an upper bound)."""
    tokens: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """``{tier or "<tier>:draft": (input_tokens, output_tokens)}`` assumed per call."""
    basis: str = ""

    def per_1000(self, coverage: float) -> float:
        """Estimated USD for 1,000 tickets when ``coverage`` of them stay with the first tier."""
        return 1000 * (coverage * self.kept_usd + (1 - coverage) * self.escalated_usd)


@dataclass(frozen=True, slots=True)
class TicketEstimate:
    """Tokens and USD for one ticket, answered by the first tier or escalated along the cascade."""

    mini_input_tokens: int
    mini_output_tokens: int
    flagship_input_tokens: int
    flagship_output_tokens: int
    mini_usd: float
    """The ticket kept by the first tier."""
    escalated_usd: float
    """The ticket escalated: the first tier's call and every later tier's."""

    def expected_usd(self, escalation_rate: float) -> float:
        return self.mini_usd + escalation_rate * (self.escalated_usd - self.mini_usd)


def _largest_articles(spec: GraphSpec) -> str:
    """The largest ``{{articles}}`` block a search can give a prompt of this graph ("" without a knowledge base)."""
    kb = spec.knowledge_base
    if kb is None:
        return ""
    from triagegate.knowledge import Article, Hit

    filler = Article(id="article", title="title", body="x" * kb.max_chars, path="")
    return articles_block([Hit(filler, 1.0)] * kb.top_k, max_chars=kb.max_chars)


class Estimator:
    """Estimates for one graph; the fixed part of each prompt is rendered once.

    ``triage`` is the first tier's backend capabilities when it is known (``eval`` and
    ``calibrate`` build it; a replayed alias presents the recorded ones). Without it, and for
    every other tier, the graph's binding decides: a ``classifier`` backend classifies,
    anything else chats. ``templates`` are keyed as :func:`~triagegate.prompts.load_graph_templates`
    keys them (tier names, and ``<tier>:draft``). A graph with a knowledge base is estimated
    with ``top_k`` articles of ``max_chars`` each in every prompt's ``{{articles}}``: the most a
    search can put there, so a cost limit is never reached by surprise.
    """

    def __init__(
        self, spec: GraphSpec, templates: dict[str, Template], *, triage: Capabilities | None = None
    ) -> None:
        self.spec = spec
        self._specs: dict[str, NodeSpec] = {}
        self._bindings: dict[str, ModelBinding] = {}
        self._chats: dict[str, bool] = {}
        first_caps = triage or Capabilities()
        for i, tier in enumerate(spec.tiers):
            binding = spec.models[tier.model]
            caps = Capabilities(
                chat=binding.backend != "classifier",
                vision=binding.capabilities.vision,
                logprobs=binding.capabilities.logprobs,
            )
            if i == 0:
                caps = first_caps = triage or caps
            self._specs[tier.name], self._bindings[tier.name], self._chats[tier.name] = (
                tier,
                binding,
                caps.chat,
            )
            if tier.draft is not None:
                key = tier.name + DRAFT
                self._specs[key], self._bindings[key] = tier.draft, spec.models[tier.draft.model]
        first = spec.first_tier
        self.triage_chats = self._chats[first.name]
        probe = Ticket(id="probe", text=_PROBE)
        draft = Triage(
            category=spec.taxonomy.category_names[0],
            priority=spec.taxonomy.default_priority,
            confidence=0.5,
            confidence_method="verbalized",
        )
        chat_caps = Capabilities(chat=True, vision=first_caps.vision, logprobs=first_caps.logprobs)
        articles = _largest_articles(spec)
        self._base: dict[str, int] = {}
        for key, node in self._specs.items():
            template = templates[key]
            if key.endswith(DRAFT):
                messages = answer_request(template, spec, probe, draft, [], node, articles=articles).messages
            elif key == spec.last_tier.name:
                messages = escalate_request(
                    template, spec, probe, draft, [], node, articles=articles
                ).messages
            else:
                messages = triage_request(
                    template, spec, probe, [], chat_caps, node, articles=articles
                ).messages
            self._base[key] = _chars(messages)

    def _calls(self, extra_chars: float, images: int) -> dict[str, tuple[int, int]]:
        """``{tier or draft: (input, output)}`` tokens per call for a ticket ``extra_chars`` longer than the probe."""

        def tokens(key: str) -> int:
            return tokens_for_chars(self._base[key] + extra_chars) + IMAGE_TOKENS * images

        out: dict[str, tuple[int, int]] = {}
        tiers = self.spec.tiers
        for i, tier in enumerate(tiers):
            if i == len(tiers) - 1:
                previous = tiers[i - 1]
                quoted = previous.max_tokens if self._chats[previous.name] else 0
                out[tier.name] = (tokens(tier.name) + quoted, tier.max_tokens)
            elif self._chats[tier.name]:
                out[tier.name] = (tokens(tier.name), tier.max_tokens)
            else:
                out[tier.name] = (0, 0)
            if tier.draft is not None:
                key = tier.name + DRAFT
                out[key] = (tokens(key), tier.draft.max_tokens)
        return out

    def _usd(self, key: str, tokens: tuple[int, int]) -> float:
        return self._bindings[key].price.cost(*tokens)

    def _kept(self) -> list[str]:
        """The calls of a ticket the first tier keeps."""
        first = self.spec.first_tier
        return [first.name] if self.triage_chats or first.draft is None else [first.name, first.name + DRAFT]

    def _later(self) -> list[str]:
        """The calls an escalated ticket adds after the first tier: every later tier's (an upper bound)."""
        return [t.name for t in self.spec.tiers[1:]]

    def ticket(self, ticket: Ticket) -> TicketEstimate:
        """Tokens and USD for ``ticket`` on each route (``batch --dry-run`` and the budget)."""
        extra = len(ticket.text) - len(_PROBE) + (len(ticket.subject) + 10 if ticket.subject else 0)
        calls = self._calls(extra, len(ticket.attachments))
        kept, later = self._kept(), self._later()
        first = self.spec.first_tier.name
        return TicketEstimate(
            mini_input_tokens=sum(calls[n][0] for n in kept),
            mini_output_tokens=sum(calls[n][1] for n in kept),
            flagship_input_tokens=sum(calls[n][0] for n in later),
            flagship_output_tokens=sum(calls[n][1] for n in later),
            mini_usd=sum(self._usd(n, calls[n]) for n in kept),
            escalated_usd=self._usd(first, calls[first]) + sum(self._usd(n, calls[n]) for n in later),
        )

    def calls_usd(self, mean_text_chars: float) -> dict[str, float]:
        """Estimated USD of each call (a tier's, ``<tier>:draft``) for a text-only ticket of
        ``mean_text_chars``, so a cascade can be costed along any path (``calibrate --cascade``)."""
        calls = self._calls(mean_text_chars - len(_PROBE), 0)
        return {key: self._usd(key, tokens) for key, tokens in calls.items()}

    def routes(self, mean_text_chars: float) -> CostEstimate:
        """USD per ticket on each route for text-only tickets of ``mean_text_chars`` (``eval``, ``calibrate``)."""
        calls = self._calls(mean_text_chars - len(_PROBE), 0)
        usd = {key: self._usd(key, tokens) for key, tokens in calls.items()}
        kept, later = self._kept(), self._later()
        first = self.spec.first_tier.name
        used = {key: calls[key] for key in calls if key in kept or key in later or key == first}
        basis = (
            f"estimate: input tokens = (prompt + mean ticket of {mean_text_chars:.0f} chars) / {CHARS_PER_TOKEN}; "
            "output tokens = each call's max_tokens (an upper bound); an escalated ticket goes through "
            "every later tier; prices from the graph's models"
        )
        return CostEstimate(
            kept_usd=sum(usd[k] for k in kept),
            escalated_usd=usd[first] + sum(usd[k] for k in later),
            tokens=used,
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
