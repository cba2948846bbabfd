"""The outcome store on PostgreSQL: migrations, the idempotent write, labels, and reads.

``outcomes`` is keyed by ``(ticket_id, graph_hash)``: the same ticket run through the
same graph (same spec, same prompts) has one row, however often it is delivered. The
write is an upsert in autocommit mode, so when :meth:`OutcomeStore.upsert` returns the
row is committed and the caller may acknowledge the queue entry. Migrations
(:data:`triagegate.store.schema.POSTGRES`) are numbered, recorded in ``schema_version`` and
applied under a transaction-scoped advisory lock, so several workers starting at once
apply each exactly once. The queue workers write here (``--results``); so can ``batch`` and
``serve`` (``--store postgresql://...``), and ``triagegate report`` reads it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from triagegate.store import schema
from triagegate.store.records import (
    GraphInfo,
    Label,
    Reference,
    Snapshot,
    StoredOutcome,
    outcome_columns,
    outcome_filter,
)
from triagegate.types import Outcome

CONNECT_TIMEOUT_S = 5.0
"""How long one connection attempt may take before the server counts as unreachable."""
MIGRATION_LOCK = 0x7472_6961_6765  # "triage": one lock id for every triagegate migration

MIGRATIONS = schema.POSTGRES
"""(version, SQL) in order (:mod:`triagegate.store.schema`)."""

UPSERT, PUT_LABEL = schema.upserts("%({})s", "to_timestamp({})")
"""The outcome and label upserts (:func:`triagegate.store.schema.upserts`)."""


async def migrate(conn: AsyncConnection[TupleRow]) -> list[int]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version > current:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
    return applied


async def migrate_dsn(dsn: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> list[int]:
    async with await AsyncConnection.connect(dsn, connect_timeout=_libpq_timeout(connect_timeout)) as conn:
        return await migrate(conn)


def _libpq_timeout(seconds: float) -> int:
    """libpq's ``connect_timeout`` is whole seconds, and it treats values under 2 as 2."""
    return max(2, math.ceil(seconds))


def outcome_row(outcome: Outcome, at: float | None = None) -> dict[str, object]:
    """The columns of ``outcome``'s row; ``at`` is its time in Unix seconds (now when unset)."""
    columns = outcome_columns(outcome, time.time() if at is None else at)
    return {**columns, "outcome": Jsonb(outcome.model_dump(mode="json"))}


class OutcomeStore:
    """A small autocommit connection pool writing outcomes. Use ``async with`` or :meth:`open`/:meth:`close`.

    Every connection attempt is bounded by ``connect_timeout`` seconds. :meth:`open` first
    makes one direct connection, so an unreachable or misconfigured server fails at once
    with the driver's reason (an :class:`psycopg.OperationalError`) instead of after the
    pool's background retries and their warnings.
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 4,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        migrate_on_open: bool = False,
    ) -> None:
        self.dsn = dsn
        self.clock = clock
        self.migrate_on_open = migrate_on_open
        self.connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, max_connections),
            open=False,
            kwargs={"autocommit": True, "connect_timeout": _libpq_timeout(connect_timeout)},
            timeout=30.0,
            name="triagegate-outcomes",
        )

    async def open(self) -> OutcomeStore:
        probe = await AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=_libpq_timeout(self.connect_timeout)
        )
        await probe.close()
        await self._pool.open(wait=True, timeout=max(10.0, 2 * self.connect_timeout))
        if self.migrate_on_open:
            await self.migrate()
        return self

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> OutcomeStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> list[int]:
        async with self._pool.connection() as conn:
            await conn.set_autocommit(False)
            try:
                return await migrate(conn)
            finally:
                await conn.set_autocommit(True)

    async def upsert(self, outcome: Outcome) -> None:
        """Write ``outcome``; the row is committed when this returns."""
        async with self._pool.connection() as conn:
            await conn.execute(UPSERT, outcome_row(outcome, self.clock()))

    async def upsert_many(self, outcomes: Sequence[Outcome]) -> None:
        """Write several outcomes in one transaction (committed when this returns)."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            now = self.clock()
            await cursor.executemany(UPSERT, [outcome_row(o, now) for o in outcomes])

    async def put_label(self, label: Label) -> None:
        """Write ``label``, replacing the ticket's earlier label from the same source."""
        row = label.model_dump()
        row["created_at"] = self.clock() if label.created_at is None else label.created_at
        async with self._pool.connection() as conn:
            await conn.execute(PUT_LABEL, row)

    async def register_graph(self, info: GraphInfo) -> None:
        """Record a graph's tiers and targets under its hash (the report reads them)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO graphs (graph_hash, info) VALUES (%s, %s) "
                "ON CONFLICT (graph_hash) DO UPDATE SET info = EXCLUDED.info",
                (info.graph_hash, Jsonb(info.model_dump(mode="json"))),
            )

    async def put_reference(self, reference: Reference) -> None:
        """Record a tier's calibration-time confidence distribution, replacing the previous one."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO reference_histograms (graph, tier, reference) VALUES (%s, %s, %s) "
                "ON CONFLICT (graph, tier) DO UPDATE SET reference = EXCLUDED.reference, created_at = now()",
                (reference.graph, reference.tier, Jsonb(reference.model_dump(mode="json"))),
            )


def read(dsn: str, *, since: float | None = None, graph_hash: str | None = None) -> Snapshot:
    """Outcomes written at or after ``since`` (Unix seconds), of one graph hash if given, in time
    order, with every label, graph and reference the store holds. Raises :class:`psycopg.Error`."""
    where, params = outcome_filter(
        since, graph_hash, since_sql="created_at >= to_timestamp(%s)", hash_sql="graph_hash = %s"
    )
    with psycopg.connect(dsn, connect_timeout=_libpq_timeout(CONNECT_TIMEOUT_S)) as conn:
        rows = conn.execute(
            f"SELECT extract(epoch FROM created_at), outcome FROM outcomes {where} ORDER BY created_at",
            params,
        ).fetchall()
        labels = conn.execute(
            "SELECT ticket_id, source, label, graph_hash, tier, acceptable, cost_usd, extract(epoch FROM created_at)"
            " FROM labels"
        ).fetchall()
        graphs = conn.execute("SELECT info FROM graphs").fetchall()
        references = conn.execute("SELECT reference FROM reference_histograms").fetchall()
    return Snapshot(
        outcomes=[StoredOutcome(created_at=float(at), outcome=Outcome.model_validate(o)) for at, o in rows],
        labels=[_label(row) for row in labels],
        graphs=[GraphInfo.model_validate(g) for (g,) in graphs],
        references=[Reference.model_validate(r) for (r,) in references],
    )


def _label(row: Sequence[object]) -> Label:
    ticket_id, source, label, graph_hash, tier, acceptable, cost, at = row
    return Label.model_validate(
        {
            "ticket_id": ticket_id,
            "source": source,
            "label": label,
            "graph_hash": graph_hash,
            "tier": tier,
            "acceptable": None if acceptable is None else bool(acceptable),
            "cost_usd": float(cost),  # type: ignore[arg-type]
            "created_at": float(at),  # type: ignore[arg-type]
        }
    )


__all__ = ["MIGRATIONS", "OutcomeStore", "migrate", "migrate_dsn", "outcome_row", "read"]
