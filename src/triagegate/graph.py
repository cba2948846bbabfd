"""The LangGraph graph: ``triage (+ gate) -> [answer] -> [escalate] -> end``.

Three steps at most, because each LangGraph step costs CPU whatever the node does
(bench/RESULTS.md, "Overhead"):

* ``triage`` asks the mini model and applies the gate (a pure function) to its result. A
  kept ticket whose triage model drafted an answer ends here.
* ``answer`` runs only when triage came from a classifier: the drafting model writes the
  answer. If drafting fails, the ticket escalates rather than going out unanswered.
* ``escalate`` asks the flagship model.

Each step applies its node's update to the state, routes, and sends the state on to the
next node's channel; the step that ends the run assembles the :class:`Outcome` and writes it
to the graph's output channel, so no extra step is spent on routing or on the Outcome.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import Any, get_type_hints

from langgraph.channels import EphemeralValue, LastValue
from langgraph.graph import END
from langgraph.pregel import NodeBuilder, Pregel
from langgraph.pregel._write import ChannelWriteEntry  # in LangGraph's API reference, under pregel
from langgraph.runtime import Runtime

from triagegate import nodes
from triagegate.spec import GraphSpec
from triagegate.state import RunContext, TicketState, Trail
from triagegate.types import Outcome

APPENDED_KEYS = frozenset(
    key
    for key, hint in get_type_hints(TicketState, include_extras=True).items()
    if operator.add in getattr(hint, "__metadata__", ())
)
"""State keys whose updates are added (annotated with ``operator.add``) rather than replacing."""


def merge(state: TicketState, update: dict[str, Any]) -> TicketState:
    """The state after a node's ``update``: keys in :data:`APPENDED_KEYS` are added to, others replaced."""
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
        confidence_fallback=triage.confidence_fallback if triage else None,
        escalation_reasons=reasons,
        path=[r.node for r in runs],
        nodes=runs,
        input_tokens=sum(r.input_tokens for r in runs),
        output_tokens=sum(r.output_tokens for r in runs),
        cost_usd=sum(r.cost_usd for r in runs),
        errors=list(trail.errors),
    )


Node = Callable[[TicketState, Runtime[RunContext]], Awaitable[dict[str, Any]]]

INPUT = "ticket"
"""The channel a run starts from: the initial state (``run_id``, ``ticket``, ``images``)."""
OUTPUT = "outcome"
"""The channel the last step writes the Outcome to; ``ainvoke`` returns its value."""
DESTINATIONS = {"triage": ("answer", "escalate", END), "answer": ("escalate", END), "escalate": (END,)}
"""Where each step may send the ticket next."""


def _inbox(node: str) -> str:
    return INPUT if node == "triage" else f"to:{node}"


def _step(node: Node, route: Callable[[TicketState], str]) -> Callable[..., Awaitable[tuple[str, Any]]]:
    """``node``, then ``route`` on the updated state: ``(next node, state)`` or ``(END, Outcome)``."""

    async def step(state: TicketState, runtime: Runtime[RunContext]) -> tuple[str, Any]:
        after = merge(state, await node(state, runtime))
        goto = route(after)
        if goto == END:
            return END, build_outcome(after, runtime.context)
        return goto, after

    step.__name__ = step.__qualname__ = node.__name__
    return step


def _send_to(destination: str) -> ChannelWriteEntry:
    """Write a step's result to ``destination``'s channel only when the step routed there."""
    return ChannelWriteEntry(
        OUTPUT if destination == END else _inbox(destination),
        mapper=lambda result: result[1] if result[0] == destination else None,
        skip_none=True,
    )


def _end(state: TicketState) -> str:
    return END


def build_graph() -> Pregel[Any, Any, Any, Any]:
    """The graph on LangGraph's Pregel API: one channel into each node, one out of the graph.

    The state travels whole, as the value a step sends to the next node's channel, and
    :func:`merge` applies each node's update. A ``StateGraph`` would keep one channel per
    state key plus an input step, and LangGraph versions and copies every channel at every
    step: this shape costs 0.57 M fewer instructions per ticket (bench/RESULTS.md,
    "Overhead"), with the same nodes and routing.
    """
    steps: dict[str, tuple[Node, Callable[[TicketState], str]]] = {
        "triage": (nodes.triage_node, nodes.route_after_triage),
        "answer": (nodes.answer_node, nodes.route_after_answer),
        "escalate": (nodes.escalate_node, _end),
    }
    graph_nodes: dict[str, Any] = {
        name: NodeBuilder()
        .subscribe_only(_inbox(name))
        .do(_step(node, route))
        .write_to(*(_send_to(d) for d in DESTINATIONS[name]))
        for name, (node, route) in steps.items()
    }
    channels: dict[str, Any] = {name: EphemeralValue(dict) for name in map(_inbox, steps)}
    channels[OUTPUT] = LastValue(Outcome)
    return Pregel(
        nodes=graph_nodes,
        channels=channels,
        input_channels=INPUT,
        output_channels=OUTPUT,
        context_schema=RunContext,
        name="triagegate",
    )


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
