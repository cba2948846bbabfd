"""The confidence gate: a pure function of the triage result and the policy.

Precedence, highest first:

1. **Hard rules** escalate whatever else is configured, because the mini tier cannot be
   trusted to answer at all: the triage failed (``triage_failed``), the triage model was
   bound for log-probabilities but its reply had none usable and the policy says
   ``on_missing_logprobs: escalate`` (``logprobs_missing``), the ticket needs vision and
   the mini model has none (``needs_vision``), or the ticket looks like it is trying to
   steer the system (``suspected_injection``).
2. **never_escalate** categories keep the mini answer, overriding the soft rules below.
3. **Soft rules**: ``complexity:<level>``, ``category:<name>``, ``priority:<name>``,
   ``repeat_contact`` when the ticket is at least the customer's ``repeat_contact``-th message
   in its thread, ``low_confidence`` when confidence is under the category's threshold (or
   the global one), and ``ungrounded`` when the policy has ``always_escalate.ungrounded`` and
   the graph's knowledge base has no article supporting the ticket.

All matching reasons are reported, not just the first, so an outcome explains itself.

:func:`pregate` is the other half of the gate: what is known about a ticket before a tier
runs (an image the tier cannot see, suspected injection, a category the tier does not
serve) skips that tier without calling its model, and :func:`handoff_reasons` is the rule
that sends a ticket to a person where the cascade would end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from triagegate.models.base import Capabilities
from triagegate.spec import GatePolicy, HandoffPolicy, TierSpec
from triagegate.types import Triage

HARD_REASONS = ("triage_failed", "logprobs_missing", "needs_vision", "suspected_injection")
PREGATE_REASONS = ("needs_vision", "suspected_injection", "category_not_served", "category_unknown")
"""Why :func:`pregate` skips a tier, in the order it reports them."""


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """What is known about a ticket before a tier runs, for :func:`pregate`."""

    has_images: bool = False
    flags: tuple[str, ...] = ()
    """Model-free screening flags (:func:`triagegate.screening.flags_for`), e.g. ``suspected_injection``."""
    category: str | None = None
    """The category the last visited tier assigned; ``None`` before any tier has run."""


@dataclass(frozen=True, slots=True)
class Decision:
    route: Literal["mini", "flagship"]
    reasons: tuple[str, ...] = field(default=())
    threshold: float = 0.0

    @property
    def escalate(self) -> bool:
        return self.route == "flagship"


def decide(
    triage: Triage,
    policy: GatePolicy,
    *,
    mini_has_vision: bool = False,
    contact: int = 1,
    grounded: bool = True,
) -> Decision:
    """Decide whether the mini tier's answer stands (``mini``) or the ticket escalates (``flagship``).

    ``contact`` is the ticket's place in its thread (:attr:`triagegate.types.Ticket.contact`).
    ``grounded`` says whether the knowledge base had an article supporting the ticket (true
    when the graph has none: the ``ungrounded`` rule needs a knowledge base).
    """
    threshold = policy.threshold_for(triage.category)
    rules = policy.always_escalate
    hard: list[str] = []
    if triage.confidence_method == "none" or triage.error is not None:
        hard.append("triage_failed")
    elif triage.confidence_fallback is not None and policy.on_missing_logprobs == "escalate":
        hard.append("logprobs_missing")
    if triage.needs_vision and not mini_has_vision and rules.needs_vision_without_vision_model:
        hard.append("needs_vision")
    if "suspected_injection" in triage.flags and rules.suspected_injection:
        hard.append("suspected_injection")

    soft: list[str] = []
    if triage.complexity in rules.complexity:
        soft.append(f"complexity:{triage.complexity}")
    if triage.category in rules.categories:
        soft.append(f"category:{triage.category}")
    if triage.priority in rules.priorities:
        soft.append(f"priority:{triage.priority}")
    if rules.repeat_contact is not None and contact >= rules.repeat_contact:
        soft.append("repeat_contact")
    if triage.confidence < threshold:
        soft.append("low_confidence")
    if rules.ungrounded and not grounded:
        soft.append("ungrounded")

    if hard:
        return Decision("flagship", tuple(hard + soft), threshold)
    if triage.category in policy.never_escalate.categories:
        return Decision("mini", (), threshold)
    if soft:
        return Decision("flagship", tuple(soft), threshold)
    return Decision("mini", (), threshold)


def pregate(facts: TicketFacts, tier: TierSpec, capabilities: Capabilities) -> tuple[str, ...]:
    """Why ``tier`` should be skipped for this ticket without calling it; empty means run it.

    The hard rules that need no model reply apply before the call, under the tier's own
    gate: ``needs_vision`` (the ticket has images, the tier's model cannot see them and the
    gate has ``always_escalate.needs_vision_without_vision_model``) and
    ``suspected_injection`` (screening flagged the text and the gate has
    ``always_escalate.suspected_injection``). A tier with ``categories`` serves only those:
    ``category_not_served`` when the category assigned so far is another, and
    ``category_unknown`` when no tier has assigned one yet (at entry). The last tier has no
    gate and no category filter (the graph file refuses them), so it is never skipped.
    """
    reasons: list[str] = []
    gate = tier.gate
    if gate is not None:
        rules = gate.always_escalate
        if facts.has_images and not capabilities.vision and rules.needs_vision_without_vision_model:
            reasons.append("needs_vision")
        if "suspected_injection" in facts.flags and rules.suspected_injection:
            reasons.append("suspected_injection")
    if tier.categories is not None:
        if facts.category is None:
            reasons.append("category_unknown")
        elif facts.category not in tier.categories:
            reasons.append("category_not_served")
    return tuple(reasons)


def handoff_reasons(
    policy: HandoffPolicy | None,
    *,
    confidence: float | None,
    category: str | None,
    priority: str | None,
    contact: int = 1,
    failed: bool = False,
) -> tuple[str, ...]:
    """Why a person should answer a ticket whose run would end here; empty means the model's answer stands.

    ``confidence`` is the ticket's (the last triage's; ``None`` when nothing triaged it, which
    ``below`` does not count as low), ``category`` and ``priority`` the final ones, ``failed``
    whether no tier produced an answer. Reasons are prefixed ``handoff:`` so an Outcome tells
    them from the gates' escalation reasons.
    """
    if policy is None:
        return ()
    reasons: list[str] = []
    if failed and policy.on_failure:
        reasons.append("handoff:failed")
    if policy.below is not None and confidence is not None and confidence < policy.below:
        reasons.append("handoff:low_confidence")
    if category is not None and category in policy.categories:
        reasons.append(f"handoff:category:{category}")
    if priority is not None and priority in policy.priorities:
        reasons.append(f"handoff:priority:{priority}")
    if policy.repeat_contact is not None and contact >= policy.repeat_contact:
        reasons.append("handoff:repeat_contact")
    return tuple(reasons)
