"""Running a ticket file through a pipeline: admission, resume, budget, stop, and the report.

Rows stream from the input (read by :mod:`triagegate.inputs`, which names a row without
an id by its content); each is checked against what this batch already did (the ledger,
plus lines written but not yet committed, plus tickets in flight):

* its id is recorded for this line: done in an earlier run, skipped silently (unless it
  failed and ``retry_failed`` is set, then it runs again and the old line is superseded);
* its id belongs to another line: a duplicate (a repeated id, or an id-less row identical
  to an earlier one), written as a ``skipped`` outcome;
* the row is unusable (bad JSON, no text, ...): written as a ``failed`` outcome;
* otherwise the ticket is handed to :meth:`Pipeline.run_many`, which keeps at most
  ``concurrency`` tickets in flight; per-model rate and concurrency limits are enforced by
  the backends, whose retries make 429s slow the batch down instead of failing it.

Admission stops when the input ends, ``limit`` outcomes were written, the budget would
be exceeded, or :meth:`BatchRunner.request_stop` was called; tickets already in flight
always finish and are recorded. :meth:`BatchRunner.abandon` gives up on them instead;
they have no line in the output and run again on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from triagegate.batch.ledger import Ledger
from triagegate.batch.progress import Progress, Snapshot
from triagegate.batch.report import RunStats
from triagegate.batch.sink import OutcomeSink, OutputStateError
from triagegate.cost import Estimator
from triagegate.errors import ConfigError
from triagegate.inputs import Row, count_rows, open_input, read_rows, resolve_format, stream_rows
from triagegate.pipeline import failed_outcome
from triagegate.store import OutcomeWriter, StoreError, attach_store, describe_store
from triagegate.types import Outcome, Ticket

if TYPE_CHECKING:
    from triagegate.pipeline import Pipeline

StopReason = Literal["finished", "interrupted", "abandoned", "budget", "limit"]
LEDGER_SUFFIX = ".ledger.sqlite"
STORE_SUFFIX = ".store.sqlite"


@dataclass(frozen=True)
class BatchOptions:
    """How to run a batch; ``state`` defaults to ``OUTPUT.ledger.sqlite`` beside the output."""

    input: str
    output: Path
    state: Path | None = None
    format: str = "auto"
    concurrency: int = 16
    limit: int | None = None
    max_cost: float | None = None
    retry_failed: bool = False
    allow_graph_change: bool = False
    assume_escalation: float = 0.2
    """Escalation rate assumed for cost estimates until real costs are known."""
    commit_every: int = 256
    commit_interval: float = 0.5
    store: str | None = None
    """The outcome store (:mod:`triagegate.store`) every Outcome is also written to: a SQLite path or a
    ``postgresql://`` URL; None: ``OUTPUT.store.sqlite`` beside the output."""

    @property
    def ledger_path(self) -> Path:
        return self.state if self.state is not None else default_ledger_path(self.output)

    @property
    def store_url(self) -> str:
        return (
            self.store
            if self.store is not None
            else str(self.output.with_name(self.output.name + STORE_SUFFIX))
        )


def default_ledger_path(output: Path) -> Path:
    return output.with_name(output.name + LEDGER_SUFFIX)


@dataclass(frozen=True)
class BatchResult:
    state: StopReason
    report: dict[str, Any]


def open_ledger(options: BatchOptions, graph_hash: str) -> Ledger:
    """Open (or create) the batch's ledger, refusing an output it did not write or a changed graph.

    The graph hash binds a batch only once it has recorded a row: a run that stopped before
    writing anything (a configuration error, say) leaves nothing a corrected run must match.
    Call this only after the input and options are validated, since it creates directories.
    """
    output, path = options.output, options.ledger_path
    if not path.exists() and output.exists() and output.stat().st_size > 0:
        raise OutputStateError(
            f"{output} already exists but has no ledger at {path}, so it was not written by this batch "
            "(or its ledger was deleted); move it away or choose another output"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(path)
    recorded = ledger.graph_hash
    if (
        recorded is not None
        and recorded != graph_hash
        and not options.allow_graph_change
        and not ledger.is_empty
    ):
        ledger.close()
        raise ConfigError(
            f"{output} was produced with graph hash {recorded}, but this graph (with its prompts and environment "
            f"overrides) hashes to {graph_hash}; write to a new output, or pass --allow-graph-change to finish "
            "the remaining tickets with this graph (each outcome records its own graph_hash)"
        )
    if recorded != graph_hash:
        ledger.set_graph_hash(graph_hash)
    return ledger


class BatchRunner:
    """One batch run; create it, call :meth:`run` once."""

    def __init__(self, pipeline: Pipeline, options: BatchOptions, progress: Progress | None = None) -> None:
        if options.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.pipeline = pipeline
        self.options = options
        self.progress = progress
        self.stats = RunStats()
        self.total: int | None = None
        self.compacted = 0
        self._stop: StopReason | None = None
        self._in_flight: dict[str, tuple[int, str | None]] = {}
        self._estimator = Estimator(pipeline.spec, pipeline.templates)
        self._spent_before = 0.0
        self._consumer: asyncio.Task[None] | None = None
        self._finished_one = asyncio.Event()
        self._abandoned = False
        self._store: OutcomeWriter | None = None
        self._detach_store: Callable[[], Awaitable[None]] | None = None

    def request_stop(self) -> None:
        """Take no new tickets; those in flight finish and are recorded."""
        if self._stop is None:
            self._stop = "interrupted"

    def abandon(self) -> None:
        """Stop now: tickets in flight are dropped (they run again when the batch is resumed)."""
        self._abandoned = True
        self._stop = "abandoned"
        if self._consumer is not None:
            self._consumer.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def snapshot(self) -> Snapshot:
        """Progress so far; with ``limit`` the run's own outcomes count against the limit."""
        done, total = self.stats.written + self.stats.already_done, self.total
        limit = self.options.limit
        if limit is not None:
            done = self.stats.written
            total = limit if total is None else min(limit, max(0, total - self.stats.already_done))
        return Snapshot(
            done=done,
            total=total,
            written=self.stats.written,
            elapsed=self.stats.elapsed,
            escalation_rate=self.stats.escalation_rate,
            spent_usd=self._spent_before + self.stats.cost_usd,
            failed=self.stats.by_status["failed"],
            in_flight=len(self._in_flight),
        )

    async def run(self) -> BatchResult:
        options = self.options
        stream = open_input(options.input)
        try:
            fmt = resolve_format(options.input, options.format, stream)
            rows = read_rows(stream, fmt, source=options.input)
            self.total = await asyncio.to_thread(count_rows, options.input, fmt)
            ledger = open_ledger(options, self.pipeline.graph_hash)
            try:
                sink = OutcomeSink(
                    options.output,
                    ledger,
                    graph_hash=self.pipeline.graph_hash,
                    commit_every=options.commit_every,
                    commit_interval=options.commit_interval,
                )
                try:
                    if sink.discarded_bytes:
                        self._say(
                            f"resuming: dropped {sink.discarded_bytes} byte(s) of output written after the last "
                            "commit; those tickets run again"
                        )
                    self._spent_before = ledger.spent_usd
                    await self._open_store()
                    try:
                        await self._run(rows, ledger, sink)
                        await self.pipeline.drain_shadows()
                    finally:
                        await self._close_store()
                finally:
                    sink.close()
                report = self._report(ledger)
            finally:
                ledger.close()
        finally:
            if options.input != "-":
                stream.close()
        assert self._stop is not None
        return BatchResult(self._stop, report)

    async def _open_store(self) -> None:
        """Open the outcome store, record the graph, and route shadow verdicts into it."""
        url = self.options.store_url
        try:
            self._store, self._detach_store = await attach_store(url, self.pipeline)
        except Exception as exc:
            raise StoreError(f"cannot open the outcome store {describe_store(url)}: {exc}") from None

    async def _close_store(self) -> None:
        if self._detach_store is not None:
            await self._detach_store()
            self._detach_store = None
            self._store = None

    async def _store_outcome(self, outcome: Outcome) -> None:
        """Write an Outcome to the store before its line goes to the output: a crash between the two
        runs the ticket again on resume, and the upsert keeps one row per ticket and graph."""
        assert self._store is not None
        try:
            await self._store.upsert(outcome)
        except Exception as exc:
            raise StoreError(
                f"cannot write to the outcome store {describe_store(self.options.store_url)}: {exc}; "
                "fix that and re-run to resume"
            ) from None

    async def _run(self, rows: Iterator[Row], ledger: Ledger, sink: OutcomeSink) -> None:
        self.stats.started = time.monotonic()
        committer = asyncio.create_task(self._commit_periodically(sink))
        follower = asyncio.create_task(self.progress.follow(self.snapshot)) if self.progress else None
        self._consumer = asyncio.create_task(self._consume(rows, ledger, sink))
        try:
            await self._consumer
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
        finally:
            for task in (committer, follower):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.stats.finished = time.monotonic()
        if self._stop is None:
            self._stop = "finished"
            sink.commit()
            self.compacted = sink.compact()

    async def _consume(self, rows: Iterator[Row], ledger: Ledger, sink: OutcomeSink) -> None:
        source = self._admit(stream_rows(rows), ledger, sink)
        outcomes = self.pipeline.run_many(source, concurrency=self.options.concurrency)
        try:
            async for outcome in outcomes:
                line, supersedes = self._in_flight.pop(outcome.ticket_id)
                await self._store_outcome(outcome)
                sink.write(outcome, line, supersedes=supersedes)
                self.stats.add(outcome, line)
                self._finished_one.set()
        finally:
            aclose = getattr(outcomes, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _commit_periodically(self, sink: OutcomeSink) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval / 2)
            sink.commit_if_due()

    async def _admit(
        self, rows: AsyncIterator[Row], ledger: Ledger, sink: OutcomeSink
    ) -> AsyncIterator[Ticket]:
        limit = self.options.limit
        async for row in rows:
            if self._stop is not None:
                return
            action, known_line, supersedes = self._classify(row, ledger, sink)
            if action == "done":
                self.stats.already_done += 1
                continue
            if limit is not None and self.stats.written + len(self._in_flight) >= limit:
                self._stop = "limit"
                return
            if action == "duplicate":
                if row.derived:
                    reason = f"line {row.line}: the same ticket as line {known_line} (no id, same content); not run again"
                else:
                    reason = f"line {row.line}: duplicate id {row.id!r} (first seen on line {known_line}); not run again"
                await self._write_rejected(sink, row, reason, "duplicate_id", status="skipped")
                continue
            ticket = row.ticket
            if ticket is None:
                await self._write_rejected(
                    sink, row, row.error or "", row.kind or "invalid_ticket", supersedes=supersedes
                )
                continue
            while not self._affordable(ticket):
                if not self._in_flight:
                    self._stop = "budget"
                    return
                self._finished_one.clear()
                await self._finished_one.wait()
                if self._stop is not None:
                    return
            self._in_flight[row.id] = (row.line, supersedes)
            yield ticket

    def _classify(self, row: Row, ledger: Ledger, sink: OutcomeSink) -> tuple[str, int | None, str | None]:
        """``(action, line the id was first seen on, run id to supersede)``; action is
        ``done``, ``duplicate``, ``new`` or ``retry``."""
        flying = self._in_flight.get(row.id)
        known = flying[0] if flying is not None else sink.pending_line(row.id)
        entry = None
        if known is None:
            entry = ledger.lookup(row.id)
            known = entry.line if entry is not None else None
        if known is None:
            return "new", None, None
        if known != row.line:
            return ("done" if ledger.has_duplicate(row.line) else "duplicate"), known, None
        if entry is not None and entry.status == "failed" and self.options.retry_failed:
            return "retry", known, entry.run_id
        return "done", known, None

    async def _write_rejected(
        self,
        sink: OutcomeSink,
        row: Row,
        reason: str,
        kind: str,
        *,
        status: str = "failed",
        supersedes: str | None = None,
    ) -> None:
        outcome = failed_outcome(row.id, reason, self.pipeline, status=status)
        if status != "skipped":  # a duplicate row shares its id with the ticket whose outcome the store holds
            await self._store_outcome(outcome)
        sink.write(outcome, row.line, duplicate=status == "skipped", supersedes=supersedes)
        self.stats.add(outcome, row.line, kind)

    def _affordable(self, ticket: Ticket) -> bool:
        """Whether spending on one more ticket keeps the batch within ``max_cost``.

        Spent is everything the ledger records plus this run; each ticket in flight and
        this one are priced at the running average, or at the prompt-based estimate
        before any ticket has finished. When the answer is no, admission waits for a
        ticket in flight to finish (which firms up both figures) and asks again; the
        batch stops for the budget only when nothing is in flight and it is still no.
        """
        budget = self.options.max_cost
        if budget is None:
            return True
        per_ticket = self.stats.average_graph_cost()
        if per_ticket is None:
            per_ticket = self._estimator.ticket(ticket).expected_usd(self.options.assume_escalation)
        spent = self._spent_before + self.stats.cost_usd
        return spent + (len(self._in_flight) + 1) * per_ticket <= budget

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    def _report(self, ledger: Ledger) -> dict[str, Any]:
        options = self.options
        return {
            "state": self._stop,
            "graph": {"name": self.pipeline.name, "hash": self.pipeline.graph_hash},
            "input": options.input,
            "output": str(options.output),
            "ledger": str(options.ledger_path),
            "store": describe_store(options.store_url),
            "options": {
                "concurrency": options.concurrency,
                "limit": options.limit,
                "max_cost": options.max_cost,
                "retry_failed": options.retry_failed,
            },
            "run": self.stats.as_dict(),
            "batch": ledger.totals(),
            "superseded_lines_removed": self.compacted,
        }
