"""The LangGraph graph: ``triage (+ gate) -> [answer] -> [escalate] -> end``.

Three steps at most, because each LangGraph step costs CPU whatever the node does
(bench/RESULTS.md, "Overhead"):

* ``triage`` asks the mini model and applies the gate (a pure function) to its result. A
  kept ticket whose triage model drafted an answer ends here.
* ``answer`` runs only when triage came from a classifier: the drafting model writes the
  answer. If drafting fails, the ticket escalates rather than going out unanswered.
* ``escalate`` asks the flagship model.

Every node returns a ``Command`` carrying its routing decision, and the step that ends the
run also assembles the :class:`Outcome`, so no extra step is spent on either.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import Any, get_type_hints

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from triagegate import nodes
from triagegate.spec import GraphSpec
from triagegate.state import RunContext, TicketState, Trail
from triagegate.types import Outcome

APPENDED_KEYS = frozenset(
    key
    for key, hint in get_type_hints(TicketState, include_extras=True).items()
    if operator.add in getattr(hint, "__metadata__", ())
)
"""State keys whose updates LangGraph adds (``operator.add`` reducers) instead of replacing."""


def merge(state: TicketState, update: dict[str, Any]) -> TicketState:
    """The state LangGraph will hold after applying ``update``: appended keys are added."""
    merged: dict[str, Any] = {**state, **update}
    for key in APPENDED_KEYS.intersection(update):
        if key in state:
            merged[key] = state[key] + update[key]  # type: ignore[literal-required]
    return merged  # type: ignore[return-value]


def build_outcome(state: TicketState, ctx: RunContext) -> Outcome:
    """Assemble the Outcome from the final state (pure: no I/O, no clock)."""
    trail = state.get("trail") or Trail()
    reply = state.get("reply")
    triage = state.get("triage")
    decision = state.get("decision")
    reasons = list(decision.reasons) if decision and decision.escalate else []
    reasons += [r for r in trail.extra_reasons if r not in reasons]
    runs = list(trail.runs)
    answer = reply.answer if reply else None
    return Outcome(
        ticket_id=state["ticket"].id,
        run_id=state["run_id"],
        graph=ctx.graph_name,
        graph_hash=ctx.graph_hash,
        status="failed" if answer is None or reply is None or reply.status == "failed" else "ok",
        route=reply.route if reply else "none",
        category=(reply.category if reply else None) or (triage.category if triage else None),
        priority=(reply.priority if reply else None) or (triage.priority if triage else None),
        complexity=triage.complexity if triage else None,
        answer=answer,
        confidence=triage.confidence if triage else None,
        confidence_method=triage.confidence_method if triage else None,
        escalation_reasons=reasons,
        path=[r.node for r in runs],
        nodes=runs,
        input_tokens=sum(r.input_tokens for r in runs),
        output_tokens=sum(r.output_tokens for r in runs),
        cost_usd=sum(r.cost_usd for r in runs),
        errors=list(trail.errors),
    )


Node = Callable[[TicketState, Runtime[RunContext]], Awaitable[dict[str, Any]]]


def _routed(node: Node, route: Callable[[TicketState], str]) -> Callable[..., Awaitable[Command[str]]]:
    """``node``, then ``route`` on the updated state, as one step that returns a ``Command``.

    Same routing as a conditional edge after ``node``, which LangGraph would run as a
    separate traced task that re-reads the whole state. When the route ends the run, the
    Outcome is built here from the state as LangGraph will hold it.
    """

    async def step(state: TicketState, runtime: Runtime[RunContext]) -> Command[str]:
        update = await node(state, runtime)
        after = merge(state, update)
        goto = route(after)
        if goto == END:
            update["outcome"] = build_outcome(after, runtime.context)
        return Command(update=update, goto=goto)

    step.__name__ = step.__qualname__ = node.__name__
    return step


def _end(state: TicketState) -> str:
    return END


def build_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    graph = StateGraph(TicketState, context_schema=RunContext)
    graph.add_node(
        "triage",
        _routed(nodes.triage_node, nodes.route_after_triage),
        destinations=("answer", "escalate", END),
    )
    graph.add_node(
        "answer", _routed(nodes.answer_node, nodes.route_after_answer), destinations=("escalate", END)
    )
    graph.add_node("escalate", _routed(nodes.escalate_node, _end), destinations=(END,))
    graph.add_edge(START, "triage")
    return graph.compile()


def mermaid(spec: GraphSpec) -> str:
    """The graph as Mermaid text, labelled with the graph file's model aliases and threshold."""

    def model(node: str) -> str:
        alias: str = getattr(spec.nodes, node).model
        binding = spec.models[alias]
        return f"{alias}: {binding.backend} {binding.model}".strip()

    return "\n".join(
        [
            "flowchart TD",
            f"    %% graph: {spec.name}",
            "    start([start]) --> triage",
            f'    triage["triage<br/>{model("triage")}"] --> gate',
            f'    gate{{"gate<br/>threshold {spec.gate.threshold}"}}',
            "    gate -- confident, answer drafted by triage --> done([end])",
            "    gate -- confident, classifier triage --> answer",
            "    gate -- escalate --> escalate",
            f'    answer["answer<br/>{model("answer")}"] -- drafted --> done',
            "    answer -- drafting failed --> escalate",
            f'    escalate["escalate<br/>{model("escalate")}"] --> done',
        ]
    )
