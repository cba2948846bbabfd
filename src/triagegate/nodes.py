"""The graph's nodes: thin async functions that call a backend and return a state update.

One generic **tier node** per tier (:func:`tier_node`): a tier before the last triages the
ticket (a chat model with one repair retry, or a classifier) and records its gate's
decision; the last tier answers what reaches it, as the flagship always has. A **draft
node** (:func:`draft_node`) writes the answer for a kept ticket whose tier's model cannot
chat. Where the ticket goes next is not decided here but on the graph's conditional edges
(:mod:`triagegate.graph`); requests and reply parsing live in :mod:`triagegate.replies`.

Nodes never raise for a model failure: they record it in the state so the ticket still
ends with an Outcome. A failed triage is a triage that escalates (``triage_failed``); a
failed draft escalates with ``answer_failed``; a failed last tier fails the ticket.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langgraph.runtime import Runtime

from triagegate import replies
from triagegate.errors import BadModelOutput, ModelError
from triagegate.gate import decide
from triagegate.log import get_logger
from triagegate.models.base import ChatRequest, ChatResult, ImagePart, Message, ModelBackend, chat_until
from triagegate.prompts import articles_block
from triagegate.replies import EarlyGate, EarlyTriage
from triagegate.screening import estimate_complexity, flags_for
from triagegate.spec import GatePolicy, GraphSpec, TierSpec
from triagegate.state import Reply, RunContext, TicketState, Visit, last_triage
from triagegate.types import GateDecision, NodeRun, Ticket, Triage, Usage

log = get_logger("triagegate.nodes")


@dataclass(frozen=True, slots=True)
class Grounding:
    """The knowledge-base articles found for a ticket: the prompt's ``{{articles}}`` and the sources it cites."""

    block: str
    sources: tuple[str, ...]
    grounded: bool
    """Whether an article supports the ticket; true in a graph without a knowledge base."""


def grounding(ctx: RunContext, ticket: Ticket) -> Grounding:
    """Search the graph's knowledge base for ``ticket`` (offline, well under a millisecond)."""
    kb = ctx.knowledge
    spec = ctx.spec.knowledge_base
    if kb is None or spec is None:
        return Grounding(articles_block(None), (), True)
    hits = kb.for_ticket(ticket)
    return Grounding(articles_block(hits, max_chars=spec.max_chars), tuple(h.id for h in hits), bool(hits))


class Node(Protocol):
    """A graph node as LangGraph calls it: the state, and the run context as ``runtime``."""

    def __call__(self, state: TicketState, *, runtime: Runtime[RunContext]) -> Awaitable[dict[str, Any]]: ...


class _Meter:
    """Accumulates one node's model usage and wall time into a :class:`NodeRun`.

    Counts are kept as plain numbers and the NodeRun is built once, in :meth:`finish`,
    rather than updated field by field.
    """

    def __init__(self, node: str, alias: str | None = None, backend: ModelBackend | None = None) -> None:
        self.started = time.perf_counter()
        self.node = node
        self.alias = alias
        self.model = backend.model if backend else None
        self.endpoint = backend.name if backend else None
        self.input_tokens = self.output_tokens = self.requests = 0
        self.cost_usd = 0.0
        self.warnings: list[str] = []

    def add(
        self,
        usage: Usage,
        endpoint: str | None = None,
        model: str | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_usd += usage.cost_usd
        self.requests += usage.requests
        if endpoint:
            self.endpoint = endpoint
        if model:
            self.model = model
        for warning in warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)

    def finish(self, error: str | None = None, error_type: str | None = None) -> NodeRun:
        """The node's NodeRun, logged as ``node_done`` at DEBUG or ``node_failed`` at WARNING.

        A node that worked is logged at DEBUG only: at INFO, ``ticket_done`` is one line per
        ticket with its path, and each log line costs about 20 us of CPU.
        """
        latency_ms = (time.perf_counter() - self.started) * 1000
        (log.warning if error else log.debug)(
            "node_failed" if error else "node_done",
            node=self.node,
            model=self.alias,
            latency_ms=round(latency_ms, 2),
            tokens_in=self.input_tokens,
            tokens_out=self.output_tokens,
            cost_usd=self.cost_usd,
            error=error,
        )
        return NodeRun(
            node=self.node,
            model_alias=self.alias,
            model=self.model,
            endpoint=self.endpoint,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            requests=self.requests,
            cost_usd=self.cost_usd,
            latency_ms=latency_ms,
            error=error,
            error_type=error_type,
            warnings=self.warnings,
        )


Send = Callable[[ChatRequest], Awaitable[ChatResult]]


async def _chat_with_one_repair(send: Send, request: ChatRequest, meter: _Meter, parse: Any) -> Any:
    """Ask once; if the reply does not parse, ask again once. Raises :class:`BadModelOutput`."""
    result = await send(request)
    meter.add(result.usage, result.endpoint, result.model, result.warnings)
    try:
        return parse(result, request)
    except BadModelOutput as first:
        log.warning("reply_invalid", node=meter.node, problem=str(first), retrying=True)
        retry = ChatRequest(
            messages=(
                *request.messages,
                Message("assistant", result.text[:2000]),
                Message(
                    "user",
                    f"That reply was invalid ({first}). Reply again with JSON that matches the schema.",
                ),
            ),
            json_schema=request.json_schema,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_logprobs=request.top_logprobs,
        )
        result = await send(retry)
        meter.add(result.usage, result.endpoint, result.model, result.warnings)
        return parse(result, retry)


def escalates_early(reading: EarlyTriage, policy: GatePolicy) -> bool:
    """Whether a triage whose first tokens say ``reading`` escalates whatever the rest says.

    A confidence under the category's threshold, or a category that always escalates, does
    (unless the category never escalates); the rules that need the rest of the reply
    (complexity, priority) can only add reasons, never keep the ticket.
    """
    if reading.category in policy.never_escalate.categories:
        return False
    return (
        reading.confidence < policy.threshold_for(reading.category)
        or reading.category in policy.always_escalate.categories
    )


def _early_triage(spec: GraphSpec, ticket: Ticket, reading: EarlyTriage) -> Triage:
    """The triage of a reply the early gate stopped: what its first tokens settled, the rest
    from the taxonomy (the ticket escalates, so no answer is needed)."""
    return Triage(
        category=reading.category,
        priority=spec.taxonomy.priority_for(reading.category),
        complexity=estimate_complexity(ticket.text),
        needs_vision=ticket.has_images,
        confidence=reading.confidence,
        confidence_method="logprobs",
        alternatives=reading.alternatives,
    )


async def triage_ticket(
    ctx: RunContext,
    tier: TierSpec,
    ticket: Ticket,
    images: Sequence[ImagePart] = (),
    flags: Sequence[str] | None = None,
    articles: Grounding | None = None,
) -> tuple[Triage, NodeRun]:
    """Triage ``ticket`` with one tier's model, as the tier's node does; never raises for a model failure.

    A chat model bound for log-probabilities streams its reply and stops it as soon as the
    option-code token shows the ticket escalates (the early gate, unless the tier's gate has
    ``early: false``); the triage is then built
    from what had arrived. A model failure gives a failed triage (``confidence_method:
    none``), which the gate escalates. Tuning (:mod:`triagegate.tuning.scoring`) calls this
    to triage with one tier outside the graph. ``articles`` (searched here when not given) fills
    the prompt's ``{{articles}}``, so a chat model's answer is grounded like a draft's.
    """
    backend = ctx.backend_for(tier)
    meter = _Meter(tier.name, tier.model, backend)
    flags = list(flags_for(f"{ticket.subject or ''}\n{ticket.text}") if flags is None else flags)
    spec = ctx.spec
    taxonomy = spec.taxonomy
    policy = tier.gate
    error: str | None = None
    error_type: str | None = None
    try:
        if backend.capabilities.chat:
            found = articles if articles is not None else grounding(ctx, ticket)
            request = replies.triage_request(
                ctx.templates[tier.name],
                spec,
                ticket,
                list(images),
                backend.capabilities,
                tier,
                articles=found.block,
            )
            stopped: list[EarlyTriage] = []

            async def send(req: ChatRequest) -> ChatResult:
                if not req.top_logprobs or policy is None or not policy.early:
                    return await backend.chat(req)
                early = EarlyGate(spec, req, lambda reading: escalates_early(reading, policy))
                result = await chat_until(backend, req, early)
                if result.stopped_early and early.reading is not None:
                    stopped.append(early.reading)
                return result

            def parse(result: ChatResult, req: ChatRequest) -> Triage:
                if result.stopped_early and stopped:
                    return _early_triage(spec, ticket, stopped[-1])
                return replies.parse_triage(result, spec, req)

            triage: Triage = await _chat_with_one_repair(send, request, meter, parse)
        else:
            classification = await backend.classify(replies.classify_request(spec, ticket))
            meter.add(
                classification.usage, classification.endpoint, classification.model, classification.warnings
            )
            category, confidence = classification.best
            ranked = sorted(classification.probabilities.items(), key=lambda kv: -kv[1])
            triage = Triage(
                category=category,
                priority=taxonomy.priority_for(category),
                complexity=estimate_complexity(ticket.text),
                needs_vision=ticket.has_images,
                confidence=confidence,
                confidence_method="classifier",
                alternatives=dict(ranked[1:4]),
            )
        triage = triage.model_copy(
            update={"needs_vision": triage.needs_vision or ticket.has_images, "flags": flags}
        )
        if triage.confidence_fallback is not None:
            log.warning(
                "logprobs_unusable",
                model=tier.model,
                endpoint=meter.endpoint,
                reason=triage.confidence_fallback,
                action=policy.on_missing_logprobs if policy else None,
            )
    except ModelError as exc:
        error = f"triage failed: {type(exc).__name__}: {exc}"
        error_type = type(exc).__name__
        triage = Triage(
            category="unknown",
            priority=taxonomy.default_priority,
            needs_vision=ticket.has_images,
            confidence=0.0,
            confidence_method="none",
            flags=flags,
            error=error,
        )
    return triage, meter.finish(error, error_type)


def gate_decision(
    tier: TierSpec, triage: Triage, *, vision: bool, contact: int = 1, grounded: bool = True
) -> GateDecision:
    """The tier's gate (:func:`triagegate.gate.decide`, pure) applied to its triage, as recorded.

    ``grounded``: whether the knowledge base supports the ticket (for the ``ungrounded`` rule).

    The decision is logged at DEBUG only: the ``ticket_done`` line at INFO carries the
    decisions, and a log line costs about 12 us of CPU per ticket.
    """
    assert tier.gate is not None, "every tier but the last has a gate (checked when the graph loads)"
    decision = decide(triage, tier.gate, mini_has_vision=vision, contact=contact, grounded=grounded)
    log.debug(
        "gate",
        tier=tier.name,
        route=decision.route,
        reasons=list(decision.reasons),
        confidence=triage.confidence,
    )
    return GateDecision(
        tier=tier.name,
        route="escalate" if decision.escalate else "keep",
        confidence=triage.confidence,
        threshold=decision.threshold,
        reasons=list(decision.reasons),
    )


def tier_node(tier: TierSpec, *, last: bool) -> Node:
    """The node for ``tier``: triage and gate it (every tier but the last), or answer it (the last)."""

    async def triage_and_gate(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        ticket = state["ticket"]
        found = grounding(ctx, ticket)
        triage, run = await triage_ticket(
            ctx, tier, ticket, state.get("images", ()), state.get("flags"), articles=found
        )
        decision = gate_decision(
            tier,
            triage,
            vision=ctx.backend_for(tier).capabilities.vision,
            contact=ticket.contact,
            grounded=found.grounded,
        )
        update: dict[str, Any] = {"visits": [Visit(tier.name, triage, decision)], "runs": [run]}
        if triage.error:
            update["errors"] = [triage.error]
        if decision.route == "keep" and triage.answer:
            update["reply"] = Reply(
                triage.answer, triage.category, triage.priority, route=tier.name, sources=found.sources
            )
        return update

    async def answer(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        backend = ctx.backend_for(tier)
        meter = _Meter(tier.name, tier.model, backend)
        found = grounding(ctx, state["ticket"])
        request = replies.escalate_request(
            ctx.templates[tier.name],
            ctx.spec,
            state["ticket"],
            last_triage(state),
            state.get("images", []),
            tier,
            vision=backend.capabilities.vision,
            articles=found.block,
        )
        try:
            reply = await _chat_with_one_repair(
                backend.chat, request, meter, lambda r, _req: replies.parse_escalation(r, ctx.spec)
            )
        except ModelError as exc:
            message = f"escalation failed: {type(exc).__name__}: {exc}"
            return {
                "reply": Reply(None, None, None, route=tier.name, status="failed"),
                "runs": [meter.finish(message, type(exc).__name__)],
                "errors": [message],
            }
        return {
            "reply": Reply(
                reply.answer, reply.category, reply.priority, route=tier.name, sources=found.sources
            ),
            "runs": [meter.finish()],
        }

    node = answer if last else triage_and_gate
    node.__name__ = node.__qualname__ = tier.name
    return node


def draft_name(tier: str) -> str:
    """The name of ``tier``'s drafting step in ``Outcome.path``, its NodeRun and its template."""
    return f"{tier}:draft"


def draft_node_name(tier: str) -> str:
    """The graph node of ``tier``'s drafting step: LangGraph reserves ``:`` in node names, and
    ``/`` cannot occur in a tier name, so it cannot collide with one."""
    return f"{tier}/draft"


def draft_node(tier: TierSpec) -> Node:
    """The node that drafts the answer for a ticket ``tier`` kept but could not write (a classifier)."""
    assert tier.draft is not None
    spec_draft = tier.draft
    name = draft_name(tier.name)

    async def draft(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        ctx = runtime.context
        triage = last_triage(state)
        assert triage is not None, "a draft follows its tier's triage"
        backend = ctx.backends[spec_draft.model]
        meter = _Meter(name, spec_draft.model, backend)
        found = grounding(ctx, state["ticket"])
        try:
            request = replies.answer_request(
                ctx.templates[name],
                ctx.spec,
                state["ticket"],
                triage,
                state.get("images", []),
                spec_draft,
                articles=found.block,
            )
            result = await backend.chat(request)
            meter.add(result.usage, result.endpoint, result.model, result.warnings)
            text = result.text.strip()
            if not text:
                raise BadModelOutput("the drafting model returned an empty answer")
        except ModelError as exc:
            message = f"answer failed: {type(exc).__name__}: {exc}"
            failed = GateDecision(tier=name, route="escalate", reasons=["answer_failed"])
            return {
                "visits": [Visit(name, None, failed)],
                "runs": [meter.finish(message, type(exc).__name__)],
                "errors": [message],
            }
        return {
            "reply": Reply(text, triage.category, triage.priority, route=tier.name, sources=found.sources),
            "runs": [meter.finish()],
        }

    draft.__name__ = draft.__qualname__ = name
    return draft
