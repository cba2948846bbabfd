"""The graph's nodes: thin async functions that call a backend and return a state update.

``triage`` (which also applies the gate), ``answer`` (drafts with the mini tier's drafting
model when triage came from a classifier) and ``escalate`` (the flagship). Decisions live
elsewhere (the gate is :func:`triagegate.gate.decide`); building requests and parsing model
replies into typed results lives in :mod:`triagegate.replies`. Nodes never raise for a model
failure: they record it in the state so the ticket still ends with an Outcome.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.graph import END
from langgraph.runtime import Runtime

from triagegate import replies
from triagegate.errors import BadModelOutput, ModelError
from triagegate.gate import Decision, decide
from triagegate.log import get_logger
from triagegate.models.base import ChatRequest, ChatResult, Message, ModelBackend
from triagegate.screening import estimate_complexity, flags_for
from triagegate.state import Reply, RunContext, TicketState, Trail
from triagegate.types import NodeRun, Triage, Usage

log = get_logger("triagegate.nodes")


class _Meter:
    """Accumulates one node's model usage and wall time into a :class:`NodeRun`.

    Counts are kept as plain numbers and the NodeRun is built once, in :meth:`finish`,
    rather than updated field by field: it runs three times per ticket.
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

    def finish(self, error: str | None = None) -> NodeRun:
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
            warnings=self.warnings,
        )


async def _chat_with_one_repair(
    backend: ModelBackend, request: ChatRequest, meter: _Meter, parse: Any
) -> tuple[Any, ChatResult]:
    """Ask once; if the reply does not parse, ask again once. Raises :class:`BadModelOutput`."""
    result = await backend.chat(request)
    meter.add(result.usage, result.endpoint, result.model, result.warnings)
    try:
        return parse(result), result
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
        result = await backend.chat(retry)
        meter.add(result.usage, result.endpoint, result.model, result.warnings)
        return parse(result), result


async def triage_node(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Triage the ticket with the mini model, then apply the gate in the same step.

    The gate is a pure decision, so it runs here rather than as a graph step of its own
    (each LangGraph step costs about 0.16 ms of CPU; bench/RESULTS.md). When the ticket is
    kept and the triage model already drafted an answer, that answer is final and the
    ticket needs no further step.
    """
    ctx = runtime.context
    ticket = state["ticket"]
    alias, backend = ctx.backend_for("triage")
    meter = _Meter("triage", alias, backend)
    flags = flags_for(f"{ticket.subject or ''}\n{ticket.text}")
    taxonomy = ctx.spec.taxonomy
    errors: tuple[str, ...] = ()
    try:
        if backend.capabilities.chat:
            node = ctx.spec.nodes.triage
            request = replies.triage_request(
                ctx.templates["triage"], ctx.spec, ticket, state.get("images", []), backend.capabilities, node
            )
            triage, _ = await _chat_with_one_repair(
                backend, request, meter, lambda r: replies.parse_triage(r, ctx.spec, request)
            )
        else:
            classification = await backend.classify(replies.classify_request(ctx.spec, ticket))
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
                model=alias,
                endpoint=meter.endpoint,
                reason=triage.confidence_fallback,
                action=ctx.spec.gate.on_missing_logprobs,
            )
        run = meter.finish()
    except ModelError as exc:
        message = f"triage failed: {type(exc).__name__}: {exc}"
        triage = Triage(
            category="unknown",
            priority=taxonomy.default_priority,
            needs_vision=ticket.has_images,
            confidence=0.0,
            confidence_method="none",
            flags=flags,
            error=message,
        )
        run, errors = meter.finish(message), (message,)
    decision, gate_run = gate(ctx, triage)
    update: dict[str, Any] = {
        "triage": triage,
        "decision": decision,
        "trail": Trail(runs=(run, gate_run), errors=errors),
    }
    if not decision.escalate and triage.answer:
        update["reply"] = Reply(triage.answer, triage.category, triage.priority, route="mini")
    return update


def gate(ctx: RunContext, triage: Triage) -> tuple[Decision, NodeRun]:
    """Apply the gate policy to ``triage``.

    The decision is logged at DEBUG only: the ``ticket_done`` line at INFO carries the same
    route, reasons and confidence, and a log line costs about 12 us of CPU per ticket.
    """
    _, mini = ctx.backend_for("triage")
    decision = decide(triage, ctx.spec.gate, mini_has_vision=mini.capabilities.vision)
    log.debug("gate", route=decision.route, reasons=list(decision.reasons), confidence=triage.confidence)
    return decision, NodeRun(node="gate")


def route_after_triage(state: TicketState) -> str:
    if state["decision"].escalate:
        return "escalate"
    return END if "reply" in state else "answer"


async def answer_node(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    triage = state["triage"]
    alias, backend = ctx.backend_for("answer")
    meter = _Meter("answer", alias, backend)
    try:
        request = replies.answer_request(
            ctx.templates["answer"], ctx.spec, state["ticket"], triage, state.get("images", [])
        )
        result = await backend.chat(request)
        meter.add(result.usage, result.endpoint, result.model, result.warnings)
        text = result.text.strip()
        if not text:
            raise BadModelOutput("the drafting model returned an empty answer")
    except ModelError as exc:
        message = f"answer failed: {type(exc).__name__}: {exc}"
        return {
            "trail": Trail(runs=(meter.finish(message),), errors=(message,), extra_reasons=("answer_failed",))
        }
    return {
        "reply": Reply(text, triage.category, triage.priority, route="mini"),
        "trail": Trail(runs=(meter.finish(),)),
    }


def route_after_answer(state: TicketState) -> str:
    return END if "reply" in state else "escalate"


async def escalate_node(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    alias, backend = ctx.backend_for("escalate")
    meter = _Meter("escalate", alias, backend)
    request = replies.escalate_request(
        ctx.templates["escalate"],
        ctx.spec,
        state["ticket"],
        state["triage"],
        state.get("images", []),
        ctx.spec.nodes.escalate,
        vision=backend.capabilities.vision,
    )
    try:
        reply, _ = await _chat_with_one_repair(
            backend, request, meter, lambda r: replies.parse_escalation(r, ctx.spec)
        )
    except ModelError as exc:
        message = f"escalation failed: {type(exc).__name__}: {exc}"
        return {
            "reply": Reply(None, None, None, route="flagship", status="failed"),
            "trail": Trail(runs=(meter.finish(message),), errors=(message,)),
        }
    return {
        "reply": Reply(reply.answer, reply.category, reply.priority, route="flagship"),
        "trail": Trail(runs=(meter.finish(),)),
    }
