"""Where paused runs and threads are kept: a LangGraph checkpointer plus an index of handoffs.

The checkpointer (``langgraph-checkpoint-sqlite``'s ``AsyncSqliteSaver`` by default,
``langgraph-checkpoint-postgres``'s ``AsyncPostgresSaver`` for a worker fleet) holds each
thread's graph state, which is what a resume continues from. Beside it, in the same
database, the table ``triagegate_handoffs`` has one row per thread that was handed to a
person: its status (``pending``, ``resolving``, ``resolved``) and the Outcome to show. It is
what ``list`` reads (the checkpointer has no cheap "which threads are paused" query) and
where a resume **claims** its handoff: one conditional ``UPDATE`` from ``pending`` to
``resolving``, so of two resumes racing from two processes exactly one wins.

A location is a file path (SQLite) or a ``postgresql://`` DSN. The serialiser revives only
the classes of :data:`triagegate.state.CHECKPOINTED_TYPES`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

from triagegate.errors import ConfigError
from triagegate.log import SECRET_USERINFO, get_logger
from triagegate.types import Outcome, Ticket

log = get_logger("triagegate.checkpoints")

HandoffStatus = Literal["pending", "resolving", "resolved"]
SETUP_LOCK = 0x7472_6961_6765_6370  # "triagecp": the advisory lock held while creating the tables
ABANDONED_S = 300.0
"""A ``resolving`` claim this old belongs to a resume that died (a resume calls no model and takes
milliseconds); another resume may take it over."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triagegate_handoffs (
    thread_id TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL,
    graph TEXT,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION,
    ticket TEXT NOT NULL,
    outcome TEXT NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS triagegate_handoffs_status ON triagegate_handoffs (status, created_at)"
_COLUMNS = "thread_id, ticket_id, graph, status, created_at, resolved_at, claimed_by, ticket, outcome"


class HandoffRecord(BaseModel):
    """One handoff as the index holds it: the thread, where it stands, and its latest Outcome."""

    thread_id: str
    ticket_id: str
    graph: str | None = None
    status: HandoffStatus
    created_at: float
    resolved_at: float | None = None
    claimed_by: str | None = None
    """Who holds (``resolving``) or held (``resolved``) the claim: the resume that answered it."""
    ticket: Ticket
    """The ticket that was handed off (with the conversation before it)."""
    outcome: Outcome


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class _Db(Protocol):
    """The two calls the index needs, in the ``?`` parameter style whatever the database."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class _Sqlite:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.conn.execute(sql, tuple(params)) as cursor:
            changed = int(cursor.rowcount)
        await self.conn.commit()
        return changed

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.conn.execute(sql, tuple(params)) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


class _Postgres:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), tuple(params))
            return int(cursor.rowcount)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(sql.replace("?", "%s"), tuple(params))
            return [
                tuple(row.values()) if isinstance(row, dict) else tuple(row)
                for row in await cursor.fetchall()
            ]


class HandoffIndex:
    """The ``triagegate_handoffs`` table: listing, claiming and recording handoffs."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    async def setup(self) -> None:
        await self._db.execute(_SCHEMA)
        await self._db.execute(_INDEX)

    async def pending(self, outcome: Outcome, ticket: Ticket) -> None:
        """Record (or record again) the handoff ``outcome`` paused on, as ``pending``."""
        assert outcome.thread_id is not None
        await self._db.execute(
            "INSERT INTO triagegate_handoffs (thread_id, ticket_id, graph, status, created_at, ticket, outcome) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET "
            "ticket_id = excluded.ticket_id, graph = excluded.graph, status = 'pending', "
            "created_at = excluded.created_at, resolved_at = NULL, claimed_by = NULL, "
            "ticket = excluded.ticket, outcome = excluded.outcome",
            (
                outcome.thread_id,
                outcome.ticket_id,
                outcome.graph,
                time.time(),
                ticket.model_dump_json(),
                outcome.model_dump_json(),
            ),
        )

    async def get(self, thread_id: str) -> HandoffRecord | None:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM triagegate_handoffs WHERE thread_id = ?", (thread_id,)
        )
        return _record(rows[0]) if rows else None

    async def list(
        self, status: HandoffStatus | None = "pending", *, limit: int = 100, offset: int = 0
    ) -> list[HandoffRecord]:
        """Handoffs oldest first, ``status`` only (``None``: every status)."""
        where, params = ("WHERE status = ?", [status]) if status is not None else ("", [])
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM triagegate_handoffs {where} ORDER BY created_at, thread_id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_record(row) for row in rows]

    async def count(self, status: HandoffStatus = "pending") -> int:
        rows = await self._db.fetch("SELECT count(*) FROM triagegate_handoffs WHERE status = ?", (status,))
        return int(rows[0][0])

    async def claim(self, thread_id: str, claimer: str, *, now: float | None = None) -> bool:
        """Move ``thread_id`` from ``pending`` to ``resolving`` for ``claimer``; ``False`` if it was not
        pending. A claim ``claimer`` already holds (it died mid-resume and is trying again) is its own,
        and one older than :data:`ABANDONED_S` is anyone's."""
        now = time.time() if now is None else now
        changed = await self._db.execute(
            "UPDATE triagegate_handoffs SET status = 'resolving', claimed_by = ?, claimed_at = ? "
            "WHERE thread_id = ? AND (status = 'pending' OR (status = 'resolving' AND "
            "(claimed_by = ? OR claimed_at < ?)))",
            (claimer, now, thread_id, claimer, now - ABANDONED_S),
        )
        return changed == 1

    async def release(self, thread_id: str, claimer: str) -> None:
        """Give a claim back (the resume failed before it changed anything)."""
        await self._db.execute(
            "UPDATE triagegate_handoffs SET status = 'pending', claimed_by = NULL "
            "WHERE thread_id = ? AND status = 'resolving' AND claimed_by = ?",
            (thread_id, claimer),
        )

    async def resolved(self, outcome: Outcome, claimer: str) -> None:
        assert outcome.thread_id is not None
        await self._db.execute(
            "UPDATE triagegate_handoffs SET status = 'resolved', resolved_at = ?, outcome = ? "
            "WHERE thread_id = ? AND claimed_by = ?",
            (time.time(), outcome.model_dump_json(), outcome.thread_id, claimer),
        )


def _record(row: tuple[Any, ...]) -> HandoffRecord:
    thread_id, ticket_id, graph, status, created_at, resolved_at, claimed_by, ticket, outcome = row
    return HandoffRecord(
        thread_id=thread_id,
        ticket_id=ticket_id,
        graph=graph,
        status=status,
        created_at=created_at,
        resolved_at=resolved_at,
        claimed_by=claimed_by,
        ticket=Ticket.model_validate_json(ticket),
        outcome=Outcome.model_validate_json(outcome),
    )


async def _try_lock(conn: Any) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (SETUP_LOCK,))
    row = await cursor.fetchone()
    return bool(row["locked"] if isinstance(row, dict) else row[0])


def serializer() -> JsonPlusSerializer:
    """LangGraph's serialiser, reviving only the state's own classes from a checkpoint."""
    from triagegate.state import CHECKPOINTED_TYPES

    return JsonPlusSerializer(allowed_msgpack_modules=CHECKPOINTED_TYPES)


class Checkpoints:
    """An open checkpointer and handoff index at one location; close it with :meth:`aclose`."""

    def __init__(
        self,
        saver: BaseCheckpointSaver[Any],
        index: HandoffIndex,
        location: str,
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.saver = saver
        self.index = index
        self.location = location
        self._close = close

    @classmethod
    async def open(cls, location: str | Path) -> Checkpoints:
        """Open (creating tables where missing) the SQLite file or PostgreSQL database at ``location``.

        Raises :class:`ConfigError` when it cannot be opened or a package is missing.
        """
        if is_postgres(location):
            return await cls._open_postgres(str(location))
        return await cls._open_sqlite(Path(location))

    @classmethod
    async def _open_sqlite(cls, path: Path) -> Checkpoints:
        try:
            import aiosqlite
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        except ImportError:
            raise ConfigError(
                "keeping handoffs and threads needs langgraph-checkpoint-sqlite: pip install langgraph-checkpoint-sqlite"
            ) from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            index_conn = await aiosqlite.connect(path, timeout=30)
            async with index_conn.execute("PRAGMA journal_mode=WAL"):
                pass
            saver_conn = await aiosqlite.connect(path, timeout=30)
        except (OSError, aiosqlite.Error) as exc:
            raise ConfigError(f"cannot open the checkpoint database {path}: {exc}") from None
        saver = AsyncSqliteSaver(saver_conn, serde=serializer())
        await saver.setup()
        index = HandoffIndex(_Sqlite(index_conn))
        await index.setup()

        async def close() -> None:
            await saver_conn.close()
            await index_conn.close()

        return cls(saver, index, str(path), close)

    @classmethod
    async def _open_postgres(cls, dsn: str) -> Checkpoints:
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            from psycopg import OperationalError
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool, PoolTimeout
        except ImportError:
            raise ConfigError(
                "keeping handoffs in PostgreSQL needs langgraph-checkpoint-postgres and psycopg-pool: "
                "pip install -e '.[queue]'"
            ) from None
        pool: Any = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=8,
            open=False,
            timeout=5,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": dict_row,
                "connect_timeout": 5,
            },
        )
        saver = AsyncPostgresSaver(pool, serde=serializer())
        index = HandoffIndex(_Postgres(pool))
        try:
            await pool.open(wait=True, timeout=5)
            async with pool.connection() as conn:
                # Workers start together: one at a time creates the tables (DDL races otherwise).
                # The lock is polled, not waited for: a waiting statement is an open transaction,
                # and the saver's CREATE INDEX CONCURRENTLY would wait for it in turn.
                while not await _try_lock(conn):
                    await asyncio.sleep(0.05)
                try:
                    await saver.setup()
                    await index.setup()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))
        except BaseException as exc:
            await pool.close()
            if not isinstance(exc, OperationalError | PoolTimeout):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = SECRET_USERINFO.sub(r"\1***@", dsn)
            raise ConfigError(f"cannot reach the checkpoint database {where}: {first}") from None
        return cls(saver, index, dsn, pool.close)

    async def aclose(self) -> None:
        await self._close()
