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


class TicketState(TypedDict, total=False):
    run_id: str
    ticket: Ticket
    images: list[ImagePart]
    triage: Triage
    decision: Decision
    answer: str | None
    category: str | None
    priority: str | None
    route: str
    status: str
    extra_reasons: Annotated[list[str], operator.add]
    node_runs: Annotated[list[NodeRun], operator.add]
    errors: Annotated[list[str], operator.add]
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
