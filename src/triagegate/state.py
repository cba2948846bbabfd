"""What flows through the graph (the LangGraph state) and what is injected (the run context)."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, TypedDict

from triagegate.gate import Decision
from triagegate.models.base import ImagePart, ModelBackend
from triagegate.prompts import Template
from triagegate.spec import GraphSpec
from triagegate.types import NodeRun, Outcome, Ticket, Triage


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer a node settled on, as it goes out: set once, by the step that ends the run."""

    answer: str | None
    category: str | None
    priority: str | None
    route: str
    """``mini`` or ``flagship``: which tier answered."""
    status: str = "ok"
    """``failed`` when the flagship could not answer."""


@dataclass(frozen=True, slots=True)
class Trail:
    """What the steps did, in order. Steps append to it (``+``) rather than replace it."""

    runs: tuple[NodeRun, ...] = ()
    errors: tuple[str, ...] = ()
    extra_reasons: tuple[str, ...] = ()
    """Escalation reasons found after the gate (``answer_failed``)."""

    def __add__(self, other: Trail) -> Trail:
        return Trail(
            self.runs + other.runs, self.errors + other.errors, self.extra_reasons + other.extra_reasons
        )


class TicketState(TypedDict, total=False):
    """What one run carries from node to node. The graph hands it whole to the next node and
    :func:`triagegate.graph.merge` applies each node's update: keys annotated with
    ``operator.add`` are added to (``trail``), the others replaced."""

    run_id: str
    ticket: Ticket
    images: list[ImagePart]
    triage: Triage
    decision: Decision
    reply: Reply
    trail: Annotated[Trail, operator.add]
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class RunContext:
    """Dependencies handed to every node through LangGraph's runtime context (no globals)."""

    spec: GraphSpec
    graph_name: str
    graph_hash: str
    templates: dict[str, Template]
    backends: dict[str, ModelBackend]

    def backend_for(self, node: str) -> tuple[str, ModelBackend]:
        alias: str = getattr(self.spec.nodes, node).model
        return alias, self.backends[alias]
