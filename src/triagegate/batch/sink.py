"""Writing outcome lines so that every input row ends up in the output exactly once.

The protocol, which holds under SIGKILL at any instant:

1. Each Outcome is appended to the output as one JSON line as soon as it completes
   (unbuffered, so it reaches the OS at once and readers can follow the file).
2. Every ``commit_every`` lines or ``commit_interval`` seconds the output is fsync'd, and
   only then does the ledger record those lines together with the new output length
   (``committed_bytes``) in one SQLite transaction.
3. On open, anything past ``committed_bytes`` (lines whose ledger commit never happened,
   or a torn last line) is cut off; those rows are simply run again.

So the first ``committed_bytes`` bytes of the output always hold exactly the lines the
ledger knows, one per row, and nothing else survives a restart. A power loss can only
lose ledger commits that came after an fsync of the output, which step 3 repairs.

``--retry-failed`` appends a new line for a retried ticket and records the old line's
run id as superseded; :meth:`OutcomeSink.compact` later rewrites the output without
superseded lines (copy, fsync, ledger marks the swap, rename), restoring one line per
row. A crash mid-compaction is finished or rolled back on the next open.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from triagegate.batch.ledger import Ledger, LedgerError, Record
from triagegate.errors import TriagegateError
from triagegate.types import Outcome


class OutputStateError(TriagegateError):
    """The output file and its ledger disagree in a way that cannot be repaired automatically."""


class OutcomeSink:
    """The output file plus its ledger, written through the protocol above."""

    def __init__(
        self,
        output: Path,
        ledger: Ledger,
        *,
        graph_hash: str,
        commit_every: int = 256,
        commit_interval: float = 0.5,
    ) -> None:
        self.output = output
        self.ledger = ledger
        self.graph_hash = graph_hash
        self.commit_every = commit_every
        self.commit_interval = commit_interval
        self._compacting = output.with_name(output.name + ".compacting")
        self._pending: list[Record] = []
        self._pending_lines: dict[str, int] = {}
        self._last_commit = time.monotonic()
        self._broken = False
        self.discarded_bytes = self._reconcile()
        self._fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        self.lines_written = 0

    def _reconcile(self) -> int:
        """Finish or undo an interrupted compaction, then cut the output back to what is committed."""
        if self.ledger.swap_pending:
            if self._compacting.exists():
                os.replace(self._compacting, self.output)
                _fsync_dir(self.output.parent)
            self.ledger.end_swap()
        elif self._compacting.exists():
            self._compacting.unlink()
        size = self.output.stat().st_size if self.output.exists() else 0
        committed = self.ledger.committed_bytes
        if size < committed:
            raise OutputStateError(
                f"{self.output} is {size} bytes but its ledger {self.ledger.path} records {committed}: the output "
                "was truncated or replaced outside this batch; restore it, or start again with a new output"
            )
        if size > committed:
            os.truncate(self.output, committed)
            fd = os.open(self.output, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return size - committed

    def write(
        self, outcome: Outcome, line: int, *, duplicate: bool = False, supersedes: str | None = None
    ) -> None:
        """Append ``outcome`` as one line; it becomes durable and recorded at the next commit."""
        if self._broken:
            raise OutputStateError(f"{self.output} could not be written earlier; re-run the batch to resume")
        data = outcome.model_dump_json().encode() + b"\n"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._broken = True
            raise OutputStateError(
                f"cannot write {self.output}: {exc.strerror or exc}; fix that and re-run the batch to resume"
            ) from None
        self._size += len(data)
        self.lines_written += 1
        self._pending.append(
            Record(
                id=outcome.ticket_id,
                line=line,
                status=outcome.status,
                route=outcome.route,
                graph_hash=outcome.graph_hash or self.graph_hash,
                run_id=outcome.run_id,
                cost_usd=outcome.cost_usd,
                duplicate=duplicate,
                supersedes=supersedes,
            )
        )
        if not duplicate:
            self._pending_lines[outcome.ticket_id] = line
        if len(self._pending) >= self.commit_every:
            self.commit()

    def pending_line(self, ticket_id: str) -> int | None:
        """The input line of ``ticket_id`` if it was written but is not committed yet."""
        return self._pending_lines.get(ticket_id)

    def commit_if_due(self) -> None:
        if self._pending and time.monotonic() - self._last_commit >= self.commit_interval:
            self.commit()

    def commit(self) -> None:
        """fsync the output, then record the pending lines and the new length in the ledger."""
        self._last_commit = time.monotonic()
        if not self._pending or self._broken:
            return
        try:
            os.fsync(self._fd)
            self.ledger.record(self._pending, self._size)
        except (OSError, LedgerError):
            self._broken = True
            raise
        self._pending = []
        self._pending_lines.clear()

    def compact(self) -> int:
        """Rewrite the output without superseded lines; returns how many were dropped."""
        self.commit()
        dropped = self.ledger.superseded_run_ids()
        if not dropped:
            return 0
        removed = 0
        with open(self.output, "rb") as source, open(self._compacting, "wb") as target:
            for raw in source:
                if _run_id(raw) in dropped:
                    removed += 1
                    continue
                target.write(raw)
            target.flush()
            os.fsync(target.fileno())
            size = target.tell()
        self.ledger.begin_swap(size)
        os.close(self._fd)
        os.replace(self._compacting, self.output)
        _fsync_dir(self.output.parent)
        self.ledger.end_swap()
        self._fd = os.open(self.output, os.O_WRONLY | os.O_APPEND)
        self._size = size
        return removed

    def close(self) -> None:
        """Commit what is pending and close the output."""
        if self._fd < 0:
            return
        try:
            self.commit()
        finally:
            os.close(self._fd)
            self._fd = -1


def _run_id(raw: bytes) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    run_id = value.get("run_id") if isinstance(value, dict) else None
    return run_id if isinstance(run_id, str) else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
