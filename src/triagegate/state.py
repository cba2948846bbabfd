"""What flows through the graph (the LangGraph state) and what is injected (the run context).

The state is a ``TypedDict`` whose list fields declare their reducer: nodes return partial
updates, and LangGraph adds a node's ``visits``, ``runs`` and ``errors`` to what is there and
replaces the other keys. Backends, templates and the spec are not state: they reach every
node through the runtime context (``context_schema=RunContext``).

A graph with a ``handoff`` rule, or a ticket on a thread, runs under a checkpointer, which
stores this state between the pause for a person and the resume. Every type the state holds
is listed in :data:`CHECKPOINTED_TYPES`, the checkpointer serialiser's allowlist: a
checkpoint can only revive these classes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypedDict

from triagegate.models.base import ImagePart, ModelBackend
from triagegate.prompts import Template
from triagegate.spec import GraphSpec, TierSpec
from triagegate.types import (
    Attachment,
    AttachmentKind,
    GateDecision,
    Handoff,
    NodeRun,
    Ticket,
    Triage,
    Turn,
)

if TYPE_CHECKING:
    from triagegate.knowledge import KnowledgeBase


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer a node settled on: set by the node that answers the ticket."""

    answer: str | None
    category: str | None
    priority: str | None
    route: str
    """The tier that answered."""
    status: str = "ok"
    """``failed`` when the last tier could not answer."""
    sources: tuple[str, ...] = ()
    """The knowledge-base articles the answering prompt carried (their ids, best first)."""


@dataclass(frozen=True, slots=True)
class Visit:
    """One tier's (or one draft's) pass over the ticket: what it concluded and what its gate said.

    ``triage`` is ``None`` for the last tier (it answers; it does not triage) and for a draft;
    ``decision`` is ``None`` for the last tier (it has no gate) and for a draft that worked.
    """

    tier: str
    triage: Triage | None
    decision: GateDecision | None


class TicketState(TypedDict, total=False):
    """What one run carries from node to node.

    ``visits``, ``runs`` and ``errors`` are appended to (``operator.add``); ``reply`` is set
    once, by the node that answers (``None`` at the start of a run on a thread, where the
    previous run's reply is cleared). The routers (:mod:`triagegate.graph`) read ``visits``.
    ``handoff`` is set by the ``human`` step when a person has answered.
    """

    run_id: str
    ticket: Ticket
    images: list[ImagePart]
    flags: list[str]
    """Screening flags of the ticket's text (:func:`triagegate.screening.flags_for`), found once at entry."""
    visits: Annotated[list[Visit], operator.add]
    reply: Reply | None
    handoff: Handoff | None
    runs: Annotated[list[NodeRun], operator.add]
    errors: Annotated[list[str], operator.add]


def last_triage(state: TicketState) -> Triage | None:
    """The triage of the last tier that triaged the ticket (what a later tier is told), if any."""
    for visit in reversed(state.get("visits") or ()):
        if visit.triage is not None:
            return visit.triage
    return None


CHECKPOINTED_TYPES: tuple[type, ...] = (
    Reply,
    Visit,
    Ticket,
    Turn,
    Attachment,
    AttachmentKind,
    Triage,
    GateDecision,
    NodeRun,
    Handoff,
    ImagePart,
)
"""Every class a checkpointed :class:`TicketState` holds (the serialiser's allowlist)."""


@dataclass(frozen=True, slots=True)
class RunContext:
    """Dependencies handed to every node through LangGraph's runtime context (no globals).

    ``templates`` are keyed by tier name, plus ``<tier>:draft`` for a tier's drafting prompt
    (:func:`triagegate.prompts.load_graph_templates`).
    """

    spec: GraphSpec
    graph_name: str
    graph_hash: str
    templates: dict[str, Template]
    backends: dict[str, ModelBackend]
    knowledge: KnowledgeBase | None = None
    """The graph's knowledge base, loaded and indexed once (``None`` when it names none)."""

    def backend_for(self, tier: TierSpec) -> ModelBackend:
        return self.backends[tier.model]
