"""Outcomes in PostgreSQL: the schema, its migrations, and the idempotent write.

``outcomes`` is keyed by ``(ticket_id, graph_hash)``: the same ticket run through the
same graph (same spec, same prompts) has one row, however often it is delivered. The
write is an upsert in autocommit mode, so when :meth:`OutcomeStore.upsert` returns the
row is committed and the caller may acknowledge the queue entry. Migrations are numbered,
recorded in ``schema_version`` and applied under a transaction-scoped advisory lock, so
several workers starting at once apply each exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from triagegate.types import Outcome

CONNECT_TIMEOUT_S = 5.0
"""How long one connection attempt may take before the server counts as unreachable."""
MIGRATION_LOCK = 0x7472_6961_6765  # "triage": one lock id for every triagegate migration

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE outcomes (
            ticket_id   text             NOT NULL,
            graph_hash  text             NOT NULL,
            graph       text,
            run_id      text             NOT NULL,
            status      text             NOT NULL,
            route       text             NOT NULL,
            category    text,
            priority    text,
            cost_usd    double precision NOT NULL DEFAULT 0,
            latency_ms  double precision NOT NULL DEFAULT 0,
            outcome     jsonb            NOT NULL,
            writes      integer          NOT NULL DEFAULT 1,
            created_at  timestamptz      NOT NULL DEFAULT now(),
            updated_at  timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (ticket_id, graph_hash)
        );
        CREATE INDEX outcomes_created_at ON outcomes (created_at);
        CREATE INDEX outcomes_status_route ON outcomes (status, route);
        """,
    ),
)
"""(version, SQL) in order; add new versions at the end, never edit an applied one."""

UPSERT = """
INSERT INTO outcomes (ticket_id, graph_hash, graph, run_id, status, route, category, priority,
                      cost_usd, latency_ms, outcome)
VALUES (%(ticket_id)s, %(graph_hash)s, %(graph)s, %(run_id)s, %(status)s, %(route)s, %(category)s,
        %(priority)s, %(cost_usd)s, %(latency_ms)s, %(outcome)s)
ON CONFLICT (ticket_id, graph_hash) DO UPDATE SET
    graph = EXCLUDED.graph, run_id = EXCLUDED.run_id, status = EXCLUDED.status, route = EXCLUDED.route,
    category = EXCLUDED.category, priority = EXCLUDED.priority, cost_usd = EXCLUDED.cost_usd,
    latency_ms = EXCLUDED.latency_ms, outcome = EXCLUDED.outcome,
    writes = outcomes.writes + 1, updated_at = now()
"""


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


def outcome_row(outcome: Outcome) -> dict[str, object]:
    if not outcome.graph_hash:
        raise ValueError(f"outcome of ticket {outcome.ticket_id!r} has no graph_hash; it cannot be keyed")
    return {
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
        "outcome": Jsonb(outcome.model_dump(mode="json")),
    }


class OutcomeStore:
    """A small autocommit connection pool writing outcomes. Use ``async with`` or :meth:`open`/:meth:`close`.

    Every connection attempt is bounded by ``connect_timeout`` seconds. :meth:`open` first
    makes one direct connection, so an unreachable or misconfigured server fails at once
    with the driver's reason (an :class:`psycopg.OperationalError`) instead of after the
    pool's background retries and their warnings.
    """

    def __init__(
        self, dsn: str, *, max_connections: int = 4, connect_timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.dsn = dsn
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
            await conn.execute(UPSERT, outcome_row(outcome))

    async def upsert_many(self, outcomes: Sequence[Outcome]) -> None:
        """Write several outcomes in one transaction (committed when this returns)."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(UPSERT, [outcome_row(o) for o in outcomes])
