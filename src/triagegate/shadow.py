"""Shadow sampling: a seeded sample of kept tickets also runs through the next tier, off the customer's path.

A tier whose gate has ``shadow: {rate, max_usd_per_day, seed}`` offers every ticket it keeps
to :meth:`ShadowRunner.offer`, which decides at once, without I/O, whether the ticket is in
the sample (:func:`in_sample`, a hash of the seed and the ticket id, so the same ticket is
always in or out) and whether the day's budget admits one more run (:class:`DayBudget`). A
sampled ticket's Outcome says so (``Outcome.shadow``) and is returned to the caller
unchanged otherwise; the shadow run is a background task.

**How the stronger tier judges.** The judge is the next tier the pre-gate lets run after the
one that kept the ticket (:func:`triagegate.graph.next_hop`), called as the cascade would
call it had the gate escalated:

* the last tier gets its own escalation request (its prompt, the ticket, and the kept
  triage with its drafted answer as the notes it always gets), with one more field in the
  reply's schema, ``kept_answer_acceptable``: whether the drafted answer is one it would
  send. Its ``category`` is the label and that field is ``acceptable``;
* a tier before the last triages the ticket; its category is the label and ``acceptable``
  stays unset (a triage judges no answer).

The verdict is a :class:`~triagegate.store.Label` (source ``shadow``) handed to every
subscriber (:meth:`ShadowRunner.subscribe`): the outcome store writes it to its ``labels``
table; without a subscriber nothing is sampled. A judge that fails gives no label (logged).
:meth:`ShadowRunner.drain` waits for the runs in flight; batch, serve and the workers call it
before they close their store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel

from triagegate import replies
from triagegate.cost import Estimator
from triagegate.errors import ModelError
from triagegate.gate import TicketFacts
from triagegate.graph import Cascade, next_hop
from triagegate.log import get_logger
from triagegate.models.base import ChatRequest, ImagePart, JsonSchema, Message
from triagegate.nodes import triage_ticket
from triagegate.spec import ShadowPolicy, TierSpec
from triagegate.state import RunContext
from triagegate.store.records import Label
from triagegate.types import Outcome, ShadowCheck, Ticket, Triage

log = get_logger("triagegate.shadow")

ACCEPTABLE_FIELD = "kept_answer_acceptable"
JUDGE_NOTE = (
    "This ticket was already answered by the first-tier assistant; its answer is the draft answer in "
    f"the notes. Besides your own reply, set `{ACCEPTABLE_FIELD}` to true if that draft answer is one "
    "you would send this customer as it stands (right category, correct and safe), false otherwise."
)

Listener = Callable[[Label], Awaitable[None]]


def in_sample(seed: int, ticket_id: str, rate: float) -> bool:
    """Whether ``ticket_id`` is in the ``rate`` sample drawn with ``seed`` (pure, uniform in the hash)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{ticket_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


@dataclass
class DayBudget:
    """What one tier's shadow runs may still spend today (UTC), in this process.

    A run is admitted when what the day has spent, plus what the runs in flight are expected
    to cost, plus this one, stays within the cap. Expected cost is the mean of the runs so
    far, or the cost estimate (:mod:`triagegate.cost`) before any has finished.
    """

    cap: float | None
    day: str = ""
    spent: float = 0.0
    runs: int = 0
    in_flight: int = 0
    capped: int = 0
    """Sampled tickets not run today because of the cap."""

    def admits(self, day: str, estimate: float) -> bool:
        if day != self.day:
            self.day, self.spent, self.runs, self.capped = day, 0.0, 0, 0
        if self.cap is None:
            return True
        per_run = self.spent / self.runs if self.runs else estimate
        return self.spent + (self.in_flight + 1) * per_run <= self.cap

    def finished(self, day: str, cost: float) -> None:
        self.in_flight -= 1
        if day == self.day:
            self.spent += cost
            self.runs += 1


class _Verdict(BaseModel):
    kept_answer_acceptable: bool


@dataclass
class ShadowRunner:
    """Shadow runs for one pipeline; built by the pipeline when a tier's gate has ``shadow``."""

    context: RunContext
    cascade: Cascade
    estimator: Estimator
    clock: Callable[[], float] = time.time
    capped: Counter[str] = field(default_factory=Counter)
    """Sampled tickets the budget turned away, by tier, since the runner started (a metric)."""
    runs: Counter[str] = field(default_factory=Counter)
    """Shadow runs finished, by tier."""
    spent_usd: dict[str, float] = field(default_factory=dict)
    """USD spent on shadow runs, by tier."""
    _budgets: dict[str, DayBudget] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _listeners: list[Listener] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with each verdict; returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def offer(
        self, ticket: Ticket, images: Sequence[ImagePart], flags: Sequence[str], outcome: Outcome
    ) -> None:
        """Sample a kept ``outcome`` and start its shadow run; sets ``outcome.shadow`` when sampled.

        Nothing is sampled while no one subscribes: a verdict nobody records would be money spent
        for nothing (``triagegate run`` has no store; ``batch``, ``serve`` and the workers subscribe it).
        """
        cascade = self.cascade
        spec = cascade.spec
        if not self._listeners:
            return
        if (
            outcome.status != "ok"
            or outcome.route == spec.last_tier.name
            or outcome.route not in spec.tier_names
        ):
            return
        tier = spec.tier(outcome.route)
        policy = tier.gate.shadow if tier.gate is not None else None
        if policy is None or not in_sample(policy.seed, ticket.id, policy.rate):
            return
        facts = TicketFacts(has_images=ticket.has_images, flags=tuple(flags), category=outcome.category)
        judge = spec.tier(next_hop(cascade, facts, spec.index(tier.name))[0])
        now = self.clock()
        day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
        budget = self._budgets.setdefault(tier.name, DayBudget(policy.max_usd_per_day))
        if not budget.admits(day, self.estimator.ticket(ticket).escalated_usd):
            budget.capped += 1
            self.capped[tier.name] += 1
            if budget.capped == 1:
                log.warning(
                    "shadow_budget_exhausted",
                    tier=tier.name,
                    day=day,
                    spent_usd=round(budget.spent, 6),
                    max_usd_per_day=policy.max_usd_per_day,
                )
            outcome.shadow = ShadowCheck(tier=tier.name, judge=judge.name, status="capped")
            return
        budget.in_flight += 1
        outcome.shadow = ShadowCheck(tier=tier.name, judge=judge.name, status="scheduled")
        task = asyncio.create_task(
            self._run(ticket, list(images), list(flags), outcome, tier, judge, policy, day)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every shadow run started so far (and any they start) to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self,
        ticket: Ticket,
        images: list[ImagePart],
        flags: list[str],
        outcome: Outcome,
        tier: TierSpec,
        judge: TierSpec,
        policy: ShadowPolicy,
        day: str,
    ) -> None:
        cost: float = 0.0
        try:
            label, cost = await self._judge(ticket, images, flags, outcome, judge)
        except Exception as exc:
            log.warning(
                "shadow_failed", tier=tier.name, judge=judge.name, error=f"{type(exc).__name__}: {exc}"
            )
            return
        finally:
            self._budgets[tier.name].finished(day, cost)
            self.runs[tier.name] += 1
            self.spent_usd[tier.name] = self.spent_usd.get(tier.name, 0.0) + cost
        if label is None:
            return
        for listener in list(self._listeners):
            try:
                await listener(label)
            except Exception as exc:
                log.warning(
                    "shadow_label_not_written", ticket_id=ticket.id, error=f"{type(exc).__name__}: {exc}"
                )

    async def _judge(
        self, ticket: Ticket, images: list[ImagePart], flags: list[str], outcome: Outcome, judge: TierSpec
    ) -> tuple[Label | None, float]:
        ctx = self.context
        spec = ctx.spec
        base = {
            "ticket_id": ticket.id,
            "source": "shadow",
            "graph_hash": outcome.graph_hash,
            "tier": judge.name,
        }
        if judge.name != spec.last_tier.name:
            triage, run = await triage_ticket(ctx, judge, ticket, images, flags)
            if triage.error:
                log.warning("shadow_failed", judge=judge.name, error=triage.error)
                return None, run.cost_usd
            return Label.model_validate(
                {**base, "label": triage.category, "cost_usd": run.cost_usd}
            ), run.cost_usd
        backend = ctx.backend_for(judge)
        request = judge_request(ctx, judge, ticket, images, outcome, vision=backend.capabilities.vision)
        result = await backend.chat(request)
        cost = result.usage.cost_usd
        try:
            reply = replies.parse_escalation(result, spec)
            verdict = _Verdict.model_validate_json(result.text)
        except (ModelError, ValueError) as exc:
            log.warning("shadow_failed", judge=judge.name, error=f"unusable reply: {exc}")
            return None, cost
        label = {
            **base,
            "label": reply.category,
            "acceptable": verdict.kept_answer_acceptable,
            "cost_usd": cost,
        }
        return Label.model_validate(label), cost


def kept_triage(outcome: Outcome) -> Triage:
    """The kept tier's triage as the Outcome records it (its answer included), for the judge's notes."""
    return Triage(
        category=outcome.category or "unknown",
        priority=outcome.priority or "normal",
        complexity=outcome.complexity or "medium",
        answer=outcome.answer,
        confidence=outcome.confidence or 0.0,
        confidence_method=outcome.confidence_method or "none",
    )


def judge_request(
    ctx: RunContext,
    judge: TierSpec,
    ticket: Ticket,
    images: list[ImagePart],
    outcome: Outcome,
    *,
    vision: bool,
) -> ChatRequest:
    """The last tier's escalation request for ``ticket``, asking also whether the kept answer is acceptable."""
    request = replies.escalate_request(
        ctx.templates[judge.name], ctx.spec, ticket, kept_triage(outcome), images, judge, vision=vision
    )
    assert request.json_schema is not None
    schema = dict(request.json_schema.schema)
    schema["properties"] = {**schema["properties"], ACCEPTABLE_FIELD: {"type": "boolean"}}
    schema["required"] = [*schema["required"], ACCEPTABLE_FIELD]
    system, *rest = request.messages
    messages = (Message("system", f"{system.text}\n\n{JUDGE_NOTE}"), *rest)
    return replace(request, messages=messages, json_schema=JsonSchema(request.json_schema.name, schema))
