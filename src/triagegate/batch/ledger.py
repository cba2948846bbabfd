"""The batch ledger: which input rows already have their Outcome durably in the output.

A SQLite database (WAL) beside the output, by default ``OUTPUT.ledger.sqlite``. It holds
one entry per ticket id (with its input line, status, route, graph hash, cost and the
``run_id`` of its outcome line), one per duplicate-id row (keyed by line), the run ids of
lines a ``--retry-failed`` run has superseded, and ``committed_bytes``: the length of the
output prefix whose lines are exactly the ones recorded here. :mod:`.sink` keeps that
invariant; this module only stores and answers.

The database is locked with ``flock`` for the lifetime of a writer, so two batches cannot
append to the same output at once.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from triagegate.errors import TriagegateError

SCHEMA_VERSION = "1"
ROW_IDS = "content"
"""How rows without an id are named (:func:`triagegate.inputs.content_id`). Ledgers from
before it named such rows ``line<N>-<hash>``; resuming one would run those rows again."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets(
    id TEXT PRIMARY KEY,
    line INTEGER NOT NULL,
    status TEXT NOT NULL,
    route TEXT NOT NULL,
    graph_hash TEXT NOT NULL,
    run_id TEXT NOT NULL,
    cost_usd REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duplicates(line INTEGER PRIMARY KEY, id TEXT NOT NULL, run_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS superseded(run_id TEXT PRIMARY KEY, id TEXT NOT NULL);
"""


class LedgerError(TriagegateError):
    """The ledger cannot be used: locked by another batch, unreadable, or from another version."""


class Entry(NamedTuple):
    """A recorded ticket: where it came from, how it ended, and which outcome line is current."""

    line: int
    status: str
    run_id: str


@dataclass(frozen=True, slots=True)
class Record:
    """One outcome line to record. ``duplicate`` rows are keyed by line, not id;
    ``supersedes`` is the run id of the earlier line this one replaces."""

    id: str
    line: int
    status: str
    route: str
    graph_hash: str
    run_id: str
    cost_usd: float
    duplicate: bool = False
    supersedes: str | None = None


class Ledger:
    """One open ledger. ``readonly`` opens an existing one without locking or writing (dry runs)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock_fd: int | None = None
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            else:
                self._db = sqlite3.connect(path, isolation_level=None)
                self._lock()
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            version = self.meta("schema")
        except sqlite3.Error as exc:
            self.close()
            raise LedgerError(f"cannot open the batch ledger {path}: {exc}") from None
        if version is None and not readonly:
            self._set_meta(
                {"schema": SCHEMA_VERSION, "committed_bytes": "0", "spent_usd": "0", "row_ids": ROW_IDS}
            )
        elif version not in (None, SCHEMA_VERSION):
            self.close()
            raise LedgerError(
                f"the batch ledger {path} has schema version {version}; this triagegate writes {SCHEMA_VERSION}"
            )
        elif version is not None and self.meta("row_ids") != ROW_IDS:
            self._check_row_ids()

    def _check_row_ids(self) -> None:
        """Refuse a ledger that named id-less rows by line number; adopt one that has none."""
        named = self._db.execute("SELECT 1 FROM tickets WHERE id GLOB 'line[0-9]*-*' LIMIT 1").fetchone()
        if named is not None:
            path = self.path
            self.close()
            raise LedgerError(
                f"the batch ledger {path} was written by an older triagegate, which named rows without an id by "
                "their line number (this one names them by their content); finish that batch with the older "
                "version, or write to a new output"
            )
        if not self.readonly:
            self._set_meta({"row_ids": ROW_IDS})

    def _lock(self) -> None:
        self._lock_fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LedgerError(
                f"another batch is already writing with the ledger {self.path}; wait for it or stop it first"
            ) from None

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._transaction():
            self._put_meta(values)

    def _put_meta(self, values: dict[str, str]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items()))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    @property
    def committed_bytes(self) -> int:
        return int(self.meta("committed_bytes") or 0)

    @property
    def spent_usd(self) -> float:
        """Money recorded by every run of this batch, superseded lines included."""
        return float(self.meta("spent_usd") or 0.0)

    @property
    def is_empty(self) -> bool:
        """Whether no outcome line has been recorded yet."""
        if self.committed_bytes:
            return False
        return (
            self._db.execute("SELECT 1 FROM tickets UNION ALL SELECT 1 FROM duplicates LIMIT 1").fetchone()
            is None
        )

    @property
    def graph_hash(self) -> str | None:
        return self.meta("graph_hash")

    def set_graph_hash(self, value: str) -> None:
        self._set_meta({"graph_hash": value})

    def lookup(self, ticket_id: str) -> Entry | None:
        row = self._db.execute(
            "SELECT line, status, run_id FROM tickets WHERE id = ?", (ticket_id,)
        ).fetchone()
        return None if row is None else Entry(int(row[0]), str(row[1]), str(row[2]))

    def has_duplicate(self, line: int) -> bool:
        return self._db.execute("SELECT 1 FROM duplicates WHERE line = ?", (line,)).fetchone() is not None

    def record(self, records: Iterable[Record], committed_bytes: int) -> None:
        """Record outcome lines and the new committed output length in one transaction."""
        tickets: list[tuple[Any, ...]] = []
        duplicates: list[tuple[Any, ...]] = []
        superseded: list[tuple[str, str]] = []
        spent = 0.0
        for r in records:
            spent += r.cost_usd
            if r.duplicate:
                duplicates.append((r.line, r.id, r.run_id))
                continue
            tickets.append((r.id, r.line, r.status, r.route, r.graph_hash, r.run_id, r.cost_usd))
            if r.supersedes is not None:
                superseded.append((r.supersedes, r.id))
        try:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?, ?, ?, ?)", tickets)
                self._db.executemany("INSERT INTO duplicates VALUES (?, ?, ?)", duplicates)
                self._db.executemany("INSERT OR IGNORE INTO superseded VALUES (?, ?)", superseded)
                self._put_meta(
                    {"committed_bytes": str(committed_bytes), "spent_usd": repr(self.spent_usd + spent)}
                )
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot record progress in the batch ledger {self.path}: {exc}; fix that and re-run to resume"
            ) from None

    def superseded_run_ids(self) -> set[str]:
        return {str(r[0]) for r in self._db.execute("SELECT run_id FROM superseded")}

    def begin_swap(self, compacted_bytes: int) -> None:
        """Record that the compacted copy is the output from now on (before it is renamed over it)."""
        with self._transaction():
            self._db.execute("DELETE FROM superseded")
            self._put_meta({"committed_bytes": str(compacted_bytes), "swap_pending": "1"})

    def end_swap(self) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM meta WHERE key = 'swap_pending'")

    @property
    def swap_pending(self) -> bool:
        return self.meta("swap_pending") == "1"

    def totals(self) -> dict[str, Any]:
        """Counts by status and route, over every run of this batch."""
        by_status = dict(self._db.execute("SELECT status, COUNT(*) FROM tickets GROUP BY status").fetchall())
        by_route = dict(self._db.execute("SELECT route, COUNT(*) FROM tickets GROUP BY route").fetchall())
        duplicates = int(self._db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0])
        if duplicates:
            by_status["skipped"] = by_status.get("skipped", 0) + duplicates
        return {
            "rows": sum(by_status.values()),
            "by_status": by_status,
            "by_route": by_route,
            "spent_usd": self.spent_usd,
        }


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
