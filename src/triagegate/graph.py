"""The LangGraph graph: ``triage -> gate -> (answer | escalate) -> finalize``.

The answer node makes no model call when the triage model already drafted an answer; it
only calls the drafting model when triage came from a classifier. If drafting fails, the
ticket escalates rather than going out unanswered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from triagegate import nodes
from triagegate.spec import GraphSpec
from triagegate.state import RunContext, TicketState
from triagegate.types import NodeRun, Outcome

NODE_ORDER = ("triage", "gate", "answer", "escalate", "finalize")


def build_outcome(state: TicketState, ctx: RunContext) -> Outcome:
    """Assemble the Outcome from the final state (pure: no I/O, no clock)."""
    runs: list[NodeRun] = state.get("node_runs", [])
    triage = state.get("triage")
    decision = state.get("decision")
    reasons = list(decision.reasons) if decision and decision.escalate else []
    reasons += [r for r in state.get("extra_reasons", []) if r not in reasons]
    route = state.get("route", "none")
    return Outcome(
        ticket_id=state["ticket"].id,
        run_id=state["run_id"],
        graph=ctx.graph_name,
        graph_hash=ctx.graph_hash,
        status="failed" if state.get("status") == "failed" or state.get("answer") is None else "ok",
        route=route if route in ("mini", "flagship") else "none",
        category=state.get("category") or (triage.category if triage else None),
        priority=state.get("priority") or (triage.priority if triage else None),
        complexity=triage.complexity if triage else None,
        answer=state.get("answer"),
        confidence=triage.confidence if triage else None,
        confidence_method=triage.confidence_method if triage else None,
        escalation_reasons=reasons,
        path=[r.node for r in runs] + ["finalize"],
        nodes=runs,
        input_tokens=sum(r.input_tokens for r in runs),
        output_tokens=sum(r.output_tokens for r in runs),
        cost_usd=sum(r.cost_usd for r in runs),
        errors=list(state.get("errors", [])),
    )


async def finalize_node(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    return {"outcome": build_outcome(state, runtime.context)}


Node = Callable[[TicketState, Runtime[RunContext]], Awaitable[dict[str, Any]]]


def _routed(node: Node, route: Callable[[TicketState], str]) -> Callable[..., Awaitable[Command[str]]]:
    """``node``, then ``route`` on the updated state, as one step that returns a ``Command``.

    Same routing as a conditional edge after ``node``, which LangGraph runs as a separate
    traced task that re-reads the whole state (a sync router in a worker thread): about
    30% of LangGraph's CPU per ticket (bench/RESULTS.md). Routers only read keys without
    reducers, so the state merged with the update is what they would have seen.
    """

    async def step(state: TicketState, runtime: Runtime[RunContext]) -> Command[str]:
        update = await node(state, runtime)
        return Command(update=update, goto=route(cast(TicketState, {**state, **update})))

    step.__name__ = step.__qualname__ = node.__name__
    return step


def build_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    graph = StateGraph(TicketState, context_schema=RunContext)
    graph.add_node("triage", nodes.triage_node)
    graph.add_node(
        "gate", _routed(nodes.gate_node, nodes.route_after_gate), destinations=("answer", "escalate")
    )
    graph.add_node(
        "answer", _routed(nodes.answer_node, nodes.route_after_answer), destinations=("finalize", "escalate")
    )
    graph.add_node("escalate", nodes.escalate_node)
    graph.add_node("finalize", finalize_node)
    graph.add_edge(START, "triage")
    graph.add_edge("triage", "gate")
    graph.add_edge("escalate", "finalize")
    graph.add_edge("finalize", END)
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
            "    gate -- confident --> answer",
            "    gate -- escalate --> escalate",
            f'    answer["answer<br/>{model("answer")}"] -- drafted --> finalize',
            "    answer -- drafting failed --> escalate",
            f'    escalate["escalate<br/>{model("escalate")}"] --> finalize',
            "    finalize --> done([end])",
        ]
    )
