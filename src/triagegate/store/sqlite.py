"""The outcome store on SQLite (the default): one file, WAL, the same tables as PostgreSQL.

Writes are small upserts in their own transactions (``synchronous=NORMAL`` under WAL: a
commit costs no fsync), made from the event loop's thread: the store is local disk and a
write takes tens of microseconds, so a thread hop would cost more than it saves. Times
are Unix seconds from the store's ``clock``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

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

UPSERT, PUT_LABEL = schema.upserts(":{}", "{}")
"""The outcome and label upserts (:func:`triagegate.store.schema.upserts`)."""


def migrate(db: sqlite3.Connection) -> list[int]:
    """Apply pending migrations in one immediate transaction; returns the versions applied now."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = int(db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])
        applied = []
        for version, sql in schema.SQLITE:
            if version > current:
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
                applied.append(version)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return applied


def _row(outcome: Outcome, at: float) -> dict[str, object]:
    return {**outcome_columns(outcome, at), "outcome": outcome.model_dump_json()}


class SqliteStore:
    """An outcome store in one SQLite file (created with its directory when missing)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._db: sqlite3.Connection | None = None

    def connect(self) -> SqliteStore:
        """Open the file and bring its schema up to date (synchronous, for scripts and the CLI)."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=5000")
                migrate(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self

    async def open(self) -> SqliteStore:
        return self.connect()

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        self.disconnect()

    async def __aenter__(self) -> SqliteStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open; call open() first")
        return self._db

    async def migrate(self) -> list[int]:
        return migrate(self.db)

    async def upsert(self, outcome: Outcome) -> None:
        self.db.execute(UPSERT, _row(outcome, self.clock()))

    async def upsert_many(self, outcomes: Sequence[Outcome]) -> None:
        now = self.clock()
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(UPSERT, [_row(o, now) for o in outcomes])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def put_label(self, label: Label) -> None:
        row = label.model_dump()
        row["created_at"] = self.clock() if label.created_at is None else label.created_at
        self.db.execute(PUT_LABEL, row)

    async def register_graph(self, info: GraphInfo) -> None:
        self.db.execute(
            "INSERT INTO graphs VALUES (?, ?, ?) ON CONFLICT (graph_hash) DO UPDATE SET info = excluded.info",
            (info.graph_hash, info.model_dump_json(), self.clock()),
        )

    async def put_reference(self, reference: Reference) -> None:
        self.db.execute(
            "INSERT INTO reference_histograms VALUES (?, ?, ?, ?) ON CONFLICT (graph, tier) DO UPDATE SET "
            "reference = excluded.reference, created_at = excluded.created_at",
            (reference.graph, reference.tier, reference.model_dump_json(), self.clock()),
        )

    def read(self, *, since: float | None = None, graph_hash: str | None = None) -> Snapshot:
        """Outcomes written at or after ``since``, of one graph hash if given, in time order, with
        every label, graph and reference the store holds."""
        where, params = outcome_filter(
            since, graph_hash, since_sql="created_at >= ?", hash_sql="graph_hash = ?"
        )
        db = self.db
        rows = db.execute(f"SELECT created_at, outcome FROM outcomes {where} ORDER BY created_at", params)
        outcomes = [StoredOutcome(created_at=at, outcome=Outcome.model_validate_json(o)) for at, o in rows]
        labels = [
            Label(
                ticket_id=t,
                source=s,
                label=lab,
                graph_hash=g,
                tier=tier,
                acceptable=None if ok is None else bool(ok),
                cost_usd=cost,
                created_at=at,
            )
            for t, s, lab, g, tier, ok, cost, at in db.execute(
                "SELECT ticket_id, source, label, graph_hash, tier, acceptable, cost_usd, created_at FROM labels"
            )
        ]
        graphs = [GraphInfo.model_validate(json.loads(i)) for (i,) in db.execute("SELECT info FROM graphs")]
        references = [
            Reference.model_validate_json(r)
            for (r,) in db.execute("SELECT reference FROM reference_histograms")
        ]
        return Snapshot(outcomes=outcomes, labels=labels, graphs=graphs, references=references)
