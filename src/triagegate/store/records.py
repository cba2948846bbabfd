"""What the outcome store holds besides outcomes, and what a read of it returns.

Every shape here crosses a boundary (a database row, the ``report`` command's JSON), so each
is a pydantic model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from triagegate.types import Outcome

LabelSource = Literal["shadow", "human", "dataset"]
LABEL_SOURCES: tuple[LabelSource, ...] = ("human", "dataset", "shadow")
"""Label sources, most trusted first: a ticket with several labels is judged by the first one it has."""


class Label(BaseModel):
    """The category a ticket should have had, from a person, a data set or a shadow run.

    Keyed by ``(ticket_id, source)``: a later label from the same source replaces the earlier.
    A ``shadow`` label is the next tier's category for a ticket a tier kept; ``acceptable``
    is that tier's judgement of the kept answer (``None`` when it was not asked: a tier that
    triages rather than answers) and ``cost_usd`` what the shadow run cost.
    """

    model_config = ConfigDict(extra="forbid")

    ticket_id: str = Field(min_length=1)
    source: LabelSource
    label: str = Field(min_length=1)
    graph_hash: str | None = None
    tier: str | None = None
    """Who gave the label: the shadow run's tier, or a free name for a person or data set."""
    acceptable: bool | None = None
    cost_usd: float = Field(default=0.0, ge=0.0)
    created_at: float | None = None
    """Unix seconds; the store's clock when unset."""


class Reference(BaseModel):
    """A tier's confidence distribution on the data its thresholds were calibrated on.

    ``edges`` are ``len(shares) + 1`` increasing bin edges over [0, 1]; ``shares`` the share of
    calibration tickets in each bin. ``triagegate report`` compares live confidences with it
    (population stability index).
    """

    model_config = ConfigDict(extra="forbid")

    graph: str
    tier: str
    edges: list[float] = Field(min_length=2)
    shares: list[float] = Field(min_length=1)
    tickets: int = Field(ge=1)
    created_at: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Reference:
        if len(self.edges) != len(self.shares) + 1:
            raise ValueError(
                f"{len(self.edges)} edges for {len(self.shares)} bins; need one more edge than bins"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("bin edges must increase")
        return self


class GraphInfo(BaseModel):
    """What the report needs to know of a graph that wrote outcomes: its tiers and targets."""

    model_config = ConfigDict(extra="forbid")

    graph_hash: str
    graph: str
    tiers: list[str] = Field(min_length=1)
    targets: dict[str, float] = Field(default_factory=dict)
    """``{tier: precision its kept answers must hold}`` from ``gate.shadow.target``."""


class StoredOutcome(BaseModel):
    created_at: float
    outcome: Outcome


class Snapshot(BaseModel):
    """What :func:`triagegate.store.read_store` returns: outcomes in time order, with what labels them."""

    outcomes: list[StoredOutcome] = Field(default_factory=list)
    labels: list[Label] = Field(default_factory=list)
    graphs: list[GraphInfo] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)


def outcome_columns(outcome: Outcome, at: float) -> dict[str, object]:
    """The columns an outcome's row has in either dialect, besides the Outcome itself (``outcome``)."""
    if not outcome.graph_hash:
        raise ValueError(f"outcome of ticket {outcome.ticket_id!r} has no graph_hash; it cannot be keyed")
    return {
        "at": at,
        "ticket_id": outcome.ticket_id,
        "graph_hash": outcome.graph_hash,
        "graph": outcome.graph,
        "run_id": outcome.run_id,
        "status": outcome.status,
        "route": outcome.route,
        "category": outcome.category,
        "priority": outcome.priority,
        "cost_usd": outcome.cost_usd,
        "latency_ms": outcome.latency_ms,
    }


def outcome_filter(
    since: float | None, graph_hash: str | None, *, since_sql: str, hash_sql: str
) -> tuple[str, list[object]]:
    """The ``WHERE`` clause and parameters that select outcomes written at or after ``since`` and of
    ``graph_hash`` (either may be ``None``); each dialect gives its own condition for each."""
    clauses: list[str] = []
    params: list[object] = []
    if since is not None:
        clauses.append(since_sql)
        params.append(since)
    if graph_hash is not None:
        clauses.append(hash_sql)
        params.append(graph_hash)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
