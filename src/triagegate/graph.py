"""The cascade compiled to a LangGraph ``StateGraph``: one node per tier, the gate on its edges.

For tiers ``t1 .. tn`` (cheapest first, :attr:`GraphSpec.tiers`) the graph is::

    START --pre-gate--> first tier that serves the ticket
    ti    --gate------> END (kept, answer written) | ti:draft (kept, classifier) | next tier that serves it
    ti:draft ---------> END (drafted) | next tier that serves it (drafting failed)
    tn    ------------> END

With a ``handoff`` rule every ``END`` above becomes a choice between ``END`` and the
``human`` node (:mod:`triagegate.handoff`), which pauses the run for a person and then ends.

Nodes (:mod:`triagegate.nodes`) call models and return partial updates; the state's reducers
(:class:`TicketState`) add them up. Routing is LangGraph's conditional edges, and each router
is a pure function of the state and of the :class:`Cascade` (the spec plus each tier model's
capabilities, fixed when the graph is built). A tier node stores its gate's decision in the
state, because the decision depends on the model's reply (and, with the early gate, on a
reply cut short) and must be recorded in the Outcome anyway; the router after it reads that
decision and applies the pre-gate (:func:`triagegate.gate.pregate`) to the tiers after it, so
a tier the pre-gate skips is never called. A router can only name a destination, not write
state, so :func:`build_outcome` asks the same pure :func:`next_hop` which tiers each hop
skipped: the Outcome cannot disagree with the route the ticket took.

The diagram (``graph show``) is the compiled graph's own (``get_graph().draw_mermaid()``).
Only LangGraph's public API is used (``langgraph.graph``, ``langgraph.runtime``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from triagegate import nodes
from triagegate.gate import TicketFacts, pregate
from triagegate.handoff import HUMAN, human, reasons_of
from triagegate.models.base import Capabilities
from triagegate.spec import GraphSpec, TierSpec
from triagegate.state import RunContext, TicketState, last_triage
from triagegate.types import GateDecision, Handoff, NodeRun, Outcome, Triage

Graph = CompiledStateGraph[TicketState, RunContext, TicketState, TicketState]


@dataclass(frozen=True, slots=True)
class Cascade:
    """What the routers need, fixed when the graph is built: the tiers and their models' capabilities."""

    spec: GraphSpec
    capabilities: Mapping[str, Capabilities]
    """By model alias."""

    @property
    def tiers(self) -> list[TierSpec]:
        return self.spec.tiers

    def caps(self, tier: TierSpec) -> Capabilities:
        return self.capabilities[tier.model]

    def drafts(self, tier: TierSpec) -> bool:
        """Whether ``tier`` has a drafting node: a draft spec, and a model that cannot write."""
        return tier.draft is not None and not self.caps(tier).chat and tier is not self.tiers[-1]


def facts_of(state: TicketState) -> TicketFacts:
    """What the pre-gate knows of the ticket now: its images, screening flags and category so far."""
    triage = last_triage(state)
    ticket = state["ticket"]
    return TicketFacts(
        has_images=ticket.has_images,
        flags=tuple(state.get("flags") or ()),
        category=triage.category if triage else None,
    )


def next_hop(cascade: Cascade, facts: TicketFacts, after: int) -> tuple[str, list[GateDecision]]:
    """The first tier after tier index ``after`` (``-1``: at entry) whose pre-gate passes, and
    a ``skip`` decision for each tier passed over. The last tier always runs (pure)."""
    tiers = cascade.tiers
    skipped: list[GateDecision] = []
    for tier in tiers[after + 1 : -1]:
        reasons = pregate(facts, tier, cascade.caps(tier))
        if not reasons:
            return tier.name, skipped
        skipped.append(GateDecision(tier=tier.name, route="skip", reasons=list(reasons)))
    return tiers[-1].name, skipped


def _hops(names: list[str], after: int, first: str) -> dict[Hashable, str]:
    """Edge labels for the hops after tier index ``after``: ``first`` to the next tier, and
    ``<first>, skip to <tier>`` past tiers the pre-gate may skip."""
    ahead = names[after + 1 :]
    return {first: ahead[0], **{f"{first}, skip to {name}": name for name in ahead[1:]}}


def _labels(hops: dict[Hashable, str]) -> dict[str, str]:
    return {target: str(label) for label, target in hops.items()}


def _entry_router(cascade: Cascade, hops: dict[Hashable, str]) -> Callable[[TicketState], str]:
    label = _labels(hops)

    def enter(state: TicketState) -> str:
        return label[next_hop(cascade, facts_of(state), -1)[0]]

    return enter


def _end(cascade: Cascade, state: TicketState, label: str) -> str:
    """``label`` (to ``END``), or ``hand off`` when the graph's handoff rule sends the ticket to a person."""
    if cascade.spec.handoff is not None and reasons_of(cascade.spec, state):
        return "hand off"
    return label


def _tier_router(cascade: Cascade, index: int, hops: dict[Hashable, str]) -> Callable[[TicketState], str]:
    """The gate's edge after tier ``index``: keep (end, or draft the answer), or escalate to
    the next tier the pre-gate lets run."""
    drafts = cascade.drafts(cascade.tiers[index])
    label = _labels(hops)

    def gate(state: TicketState) -> str:
        decision = state["visits"][-1].decision
        if decision is not None and decision.route == "keep":
            if state.get("reply") is not None:
                return _end(cascade, state, "keep")
            if drafts:
                return "draft"
        return label[next_hop(cascade, facts_of(state), index)[0]]

    return gate


def _draft_router(cascade: Cascade, index: int, hops: dict[Hashable, str]) -> Callable[[TicketState], str]:
    label = _labels(hops)

    def drafted(state: TicketState) -> str:
        if state.get("reply") is not None:
            return _end(cascade, state, "drafted")
        return label[next_hop(cascade, facts_of(state), index)[0]]

    return drafted


def _last_router(cascade: Cascade) -> Callable[[TicketState], str]:
    def answered(state: TicketState) -> str:
        return _end(cascade, state, "answered")

    return answered


def _gate_label(tier: TierSpec) -> str:
    gate = tier.gate
    assert gate is not None
    extra = f", {len(gate.category_thresholds)} by category" if gate.category_thresholds else ""
    return f"{gate.threshold}{extra}"


def build_graph(
    spec: GraphSpec, capabilities: Mapping[str, Capabilities], *, checkpointer: Checkpointer = None
) -> Graph:
    """Compile ``spec``'s cascade; ``capabilities`` by model alias (the built backends', or
    those the graph file declares when nothing is built, as ``graph show`` does).

    ``checkpointer`` keeps each run's state by thread (LangGraph's ``thread_id``): needed for
    the ``human`` step to pause and resume, and for threads; without one a run keeps nothing."""
    cascade = Cascade(spec, capabilities)
    tiers = cascade.tiers
    graph = StateGraph(TicketState, context_schema=RunContext)
    last = len(tiers) - 1
    names = [t.name for t in tiers]
    for i, tier in enumerate(tiers):
        metadata: dict[str, Any] = {"model": tier.model}
        if tier.gate is not None:
            metadata["threshold"] = _gate_label(tier)
        if tier.categories is not None:
            metadata["serves"] = ", ".join(tier.categories)
        graph.add_node(tier.name, nodes.tier_node(tier, last=i == last), metadata=metadata)
        if cascade.drafts(tier):
            assert tier.draft is not None
            graph.add_node(
                nodes.draft_node_name(tier.name), nodes.draft_node(tier), metadata={"model": tier.draft.model}
            )
    handoff: dict[Hashable, str] = {}
    if spec.handoff is not None:
        graph.add_node(HUMAN, human, metadata={"handoff": "a person answers"})
        graph.add_edge(HUMAN, END)
        handoff = {"hand off": HUMAN}
    graph.add_conditional_edges(START, _entry_router(cascade, entry := _hops(names, -1, "enter")), entry)
    for i, tier in enumerate(tiers[:-1]):
        escalate = _hops(names, i, "escalate")
        targets: dict[Hashable, str] = {"keep": END, **escalate, **handoff}
        if cascade.drafts(tier):
            draft = nodes.draft_node_name(tier.name)
            targets["draft"] = draft
            failed = _hops(names, i, "drafting failed")
            graph.add_conditional_edges(
                draft, _draft_router(cascade, i, failed), {"drafted": END, **failed, **handoff}
            )
        graph.add_conditional_edges(tier.name, _tier_router(cascade, i, escalate), targets)
    if handoff:
        graph.add_conditional_edges(tiers[-1].name, _last_router(cascade), {"answered": END, **handoff})
    else:
        graph.add_edge(tiers[-1].name, END)
    return graph.compile(name=spec.name, checkpointer=checkpointer)


def decisions_of(cascade: Cascade, state: TicketState) -> list[GateDecision]:
    """Every decision on the ticket's way, in order: the skips at entry, then each gate's
    decision followed by the skips of the hop it led to (pure; see :func:`next_hop`)."""
    ticket = state["ticket"]
    flags = tuple(state.get("flags") or ())
    index = {t.name: i for i, t in enumerate(cascade.tiers)}
    category: str | None = None

    def hop(after: int) -> list[GateDecision]:
        return next_hop(cascade, TicketFacts(ticket.has_images, flags, category), after)[1]

    out = hop(-1)
    for visit in state.get("visits") or ():
        if visit.triage is not None:
            category = visit.triage.category
        if visit.decision is None:
            continue
        out.append(visit.decision)
        if visit.decision.route == "escalate":
            out += hop(index[visit.tier.partition(":")[0]])
    return out


def build_outcome(
    state: TicketState,
    cascade: Cascade,
    ctx: RunContext,
    *,
    pending: Handoff | None = None,
    thread_id: str | None = None,
) -> Outcome:
    """Assemble the Outcome from the final state (pure: no I/O, no clock).

    ``pending`` is the handoff a run paused on: the Outcome is then ``awaiting_human``, its
    ``answer`` empty and the draft in ``handoff``; a resumed run's state carries its handoff.
    """
    reply = state.get("reply")
    handoff = pending or state.get("handoff")
    triage: Triage | None = last_triage(state)
    runs: list[NodeRun] = list(state.get("runs") or ())
    decisions = decisions_of(cascade, state)
    reasons: list[str] = []
    for decision in decisions:
        if decision.route == "keep":
            continue
        for reason in decision.reasons:
            if reason not in reasons:
                reasons.append(reason)
    if handoff is not None:
        reasons += [r for r in handoff.reasons if r not in reasons]
    answer = reply.answer if reply else None
    status = "failed" if answer is None or reply is None or reply.status == "failed" else "ok"
    if pending is not None:
        answer, status = None, "awaiting_human"
    return Outcome(
        ticket_id=state["ticket"].id,
        run_id=state["run_id"],
        graph=ctx.graph_name,
        graph_hash=ctx.graph_hash,
        status=status,
        route=reply.route if reply else "none",
        category=(reply.category if reply else None) or (triage.category if triage else None),
        priority=(reply.priority if reply else None) or (triage.priority if triage else None),
        complexity=triage.complexity if triage else None,
        answer=answer,
        sources=list(reply.sources) if reply and answer is not None else [],
        confidence=triage.confidence if triage else None,
        confidence_method=triage.confidence_method if triage else None,
        confidence_fallback=triage.confidence_fallback if triage else None,
        escalation_reasons=reasons,
        path=[r.node for r in runs],
        decisions=decisions,
        nodes=runs,
        input_tokens=sum(r.input_tokens for r in runs),
        output_tokens=sum(r.output_tokens for r in runs),
        cost_usd=sum(r.cost_usd for r in runs),
        errors=list(state.get("errors") or ()),
        thread_id=thread_id,
        handoff=handoff,
    )


def mermaid(graph: Graph) -> str:
    """The compiled graph's own Mermaid diagram, each tier labelled with its model and gate.

    LangGraph draws the nodes and edges (``get_graph().draw_mermaid()``); the labels come
    from each node's metadata, which LangGraph carries into the drawing, so the picture is
    the graph that runs.
    """
    return graph.get_graph().draw_mermaid()
