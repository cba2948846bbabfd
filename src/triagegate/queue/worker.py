"""A queue worker: read tickets from a consumer group, run them, upsert outcomes, then acknowledge.

A resume entry (a person's answer to a handoff, :meth:`TicketStream.add_resume`) is applied
with :meth:`Pipeline.resume` under a claim named after the entry, so a redelivered entry
finishes its own resume rather than being refused by it, and the final Outcome is upserted
over the ticket's pending one. A resume that another already answered (the race: exactly
one wins), an unknown thread or an answer that does not fit is dead-lettered with the reason.

Workers write to the PostgreSQL outcome store (:mod:`triagegate.store.postgres`), shadow
verdicts included; a worker that stops waits for its shadow runs before it returns.

Per entry, in order: give up on it if it was already delivered ``max_deliveries`` times
(dead letter, with the last recorded error); dead-letter it at once if it is poison (no
valid ticket: retrying cannot help); run it (a ticket the pipeline refuses becomes a
``failed`` outcome, like a bad row in a batch); upsert the outcome; XACK. Any other
failure leaves the entry pending with its error recorded, and whichever live worker
next reclaims it (XAUTOCLAIM after ``claim_idle``) retries it. Entries still being
worked on are kept fresh with ``JUSTID`` claims so a slow ticket is not mistaken for a
dead worker's. A store failure holds its slot for a growing pause, so a database outage
slows intake instead of burning through deliveries.

:meth:`Worker.stop` (SIGTERM) stops reading; in-flight tickets finish and are
acknowledged before :meth:`Worker.run` returns. If Redis stays unreachable past the
client's own retries, :meth:`Worker.run` raises: the process exits non-zero for its
supervisor to restart, and the entries it held are reclaimed by the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import psycopg
import structlog
from redis.exceptions import RedisError

from triagegate.errors import HandoffError, InputError
from triagegate.log import get_logger
from triagegate.pipeline import Pipeline, failed_outcome
from triagegate.queue.redis_stream import Entry, PoisonEntry, TicketStream
from triagegate.store.postgres import OutcomeStore
from triagegate.types import Outcome

log = get_logger("triagegate.queue")

RATE_WINDOW_S = 60.0
OUTAGES = (psycopg.Error, RedisError, OSError)
"""Failures of the services around the worker: logged by their message; anything else (a bug)
is logged with its traceback."""
MAX_STORE_PAUSE_S = 30.0


def default_consumer() -> str:
    """``host-pid``: unique per process, so a restarted worker never inherits a stale identity."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    consumer: str = field(default_factory=default_consumer)
    concurrency: int = 8
    claim_idle_s: float = 60.0
    """An entry pending this long without progress is presumed lost by its worker and reclaimed."""
    max_deliveries: int = 5
    block_ms: int = 1000
    stats_every_s: float = 2.0
    exit_when_idle_s: float | None = None
    """Exit once nothing was read, claimed or in flight for this long (drain-and-exit runs)."""
    store_pause_s: float = 0.5
    """First pause after a failed write; doubles per consecutive failure up to 30 s."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.claim_idle_s <= 0:
            raise ValueError("claim_idle must be positive")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")


@dataclass(slots=True)
class WorkerStats:
    processed: int = 0
    """Entries whose outcome was written and acknowledged."""
    failed_outcomes: int = 0
    """Of those, outcomes with status ``failed`` (model or input failure)."""
    dead: int = 0
    errors: int = 0
    """Attempts that left the entry pending for a retry."""
    reclaimed: int = 0
    resumed: int = 0
    """Of ``processed``, handoffs a person's answer from the stream finished."""
    resumes_refused: int = 0
    """Resume entries dead-lettered: answered already (another resume won), unknown thread, bad answer."""
    started_at: float = field(default_factory=time.time)
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def rate(self, now: float) -> float:
        """Entries processed per second over the last minute."""
        self.samples.append((now, self.processed))
        while len(self.samples) > 1 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        first_t, first_n = self.samples[0]
        return (self.processed - first_n) / (now - first_t) if now > first_t else 0.0


class Worker:
    def __init__(
        self, pipeline: Pipeline, stream: TicketStream, store: OutcomeStore, settings: WorkerSettings
    ) -> None:
        self.pipeline = pipeline
        self.stream = stream
        self.store = store
        self.settings = settings
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], str] = {}
        self._store_failures = 0

    @property
    def consumer(self) -> str:
        return self.settings.consumer

    def stop(self) -> None:
        """Stop reading; :meth:`run` returns once in-flight entries are done."""
        self._stopping.set()

    async def run(self) -> WorkerStats:
        """Consume until stopped (or idle), then finish in-flight entries and their shadow runs."""
        from triagegate.store import graph_info

        try:
            await self.store.register_graph(graph_info(self.pipeline))
        except Exception as exc:  # the report lacks this graph's targets until a worker registers it
            log.warning("graph_not_registered", error=f"{type(exc).__name__}: {exc}")
        shadows = self.pipeline.shadows
        unsubscribe = shadows.subscribe(self.store.put_label) if shadows is not None else None
        try:
            return await self._run()
        finally:
            await self.pipeline.drain_shadows()
            if unsubscribe is not None:
                unsubscribe()

    async def _run(self) -> WorkerStats:
        s = self.settings
        await self.stream.ensure_group()
        self._dispatch(await self.stream.read_own_pending(self.consumer, s.concurrency * 4))
        claim_idle_ms = int(s.claim_idle_s * 1000)
        next_claim = next_refresh = next_stats = 0.0
        cursor = "0-0"
        last_busy = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_stats:
                await self._publish(now)
                next_stats = now + s.stats_every_s
            if now >= next_refresh and self._tasks:
                await self.stream.keep_alive(self.consumer, list(self._tasks.values()))
                next_refresh = now + s.claim_idle_s / 3
            free = s.concurrency - len(self._tasks)
            if now >= next_claim and free > 0:
                cursor, claimed = await self.stream.claim(self.consumer, claim_idle_ms, free, cursor)
                self.stats.reclaimed += len(claimed)
                self._dispatch(claimed)
                free -= len(claimed)
                next_claim = now if cursor != "0-0" else now + max(0.2, s.claim_idle_s / 2)
                if claimed:
                    last_busy = now
            if free <= 0:
                await asyncio.wait(self._tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            entries = await self.stream.read(self.consumer, free, s.block_ms)
            self._dispatch(entries)
            if entries or self._tasks:
                last_busy = time.monotonic()
            elif s.exit_when_idle_s is not None and time.monotonic() - last_busy >= s.exit_when_idle_s:
                log.info("worker_idle_exit", consumer=self.consumer)
                break
        if self._tasks:
            await asyncio.gather(*self._tasks)
        await self._publish(time.monotonic())
        return self.stats

    def _dispatch(self, entries: list[Entry]) -> None:
        for entry in entries:
            task = asyncio.create_task(self._handle(entry))
            self._tasks[task] = entry.id
            task.add_done_callback(self._tasks.pop)

    async def _handle(self, entry: Entry) -> None:
        with structlog.contextvars.bound_contextvars(entry_id=entry.id, delivery=entry.deliveries):
            try:
                await self._process(entry)
            except Exception as exc:  # a bug or an outage: keep the entry pending for a retry
                self.stats.errors += 1
                log.warning(
                    "entry_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    consumer=self.consumer,
                    exc_info=None if isinstance(exc, OUTAGES) else exc,
                )
                try:
                    await self.stream.record_error(entry.id, f"{type(exc).__name__}: {exc}")
                except Exception as record_exc:
                    log.warning("record_error_failed", error=str(record_exc))

    async def _process(self, entry: Entry) -> None:
        s = self.settings
        if entry.deliveries > s.max_deliveries:
            last = await self.stream.last_error(entry.id)
            why = last or "no error was recorded: the worker holding it died or stalled each time"
            await self._dead(entry, f"gave up after {entry.deliveries - 1} deliveries; last error: {why}")
            return
        if entry.is_resume:
            await self._resume(entry)
            return
        try:
            ticket = entry.ticket()
        except PoisonEntry as exc:
            await self._dead(entry, str(exc))
            return
        try:
            outcome = await self.pipeline.run(ticket)
        except InputError as exc:
            outcome = failed_outcome(ticket.id, str(exc), self.pipeline)
        await self._store(outcome)
        await self.stream.ack(entry.id)
        self.stats.processed += 1
        if outcome.status not in ("ok", "awaiting_human"):
            self.stats.failed_outcomes += 1

    async def _resume(self, entry: Entry) -> None:
        try:
            thread, answer = entry.resume()
            outcome = await self.pipeline.resume(
                thread, answer, claimer=f"queue:{self.stream.stream}:{entry.id}"
            )
        except (PoisonEntry, HandoffError, InputError) as exc:
            self.stats.resumes_refused += 1
            await self._dead(entry, f"resume refused: {exc}")
            return
        await self._store(outcome)
        await self.stream.ack(entry.id)
        self.stats.processed += 1
        self.stats.resumed += 1

    async def _store(self, outcome: Outcome) -> None:
        try:
            await self.store.upsert(outcome)
        except Exception:
            self._store_failures += 1
            pause = min(
                MAX_STORE_PAUSE_S, self.settings.store_pause_s * 2 ** min(self._store_failures - 1, 8)
            )
            log.warning("store_failed", pause_s=pause, consecutive=self._store_failures)
            await asyncio.sleep(pause)
            raise
        self._store_failures = 0

    async def _dead(self, entry: Entry, error: str) -> None:
        if await self.stream.dead_letter(entry, error, self.consumer):
            self.stats.dead += 1
            log.warning("dead_lettered", error=error, consumer=self.consumer)

    async def _publish(self, now: float) -> None:
        st = self.stats
        payload = {
            "consumer": self.consumer,
            "pid": os.getpid(),
            "processed": st.processed,
            "failed_outcomes": st.failed_outcomes,
            "dead": st.dead,
            "errors": st.errors,
            "reclaimed": st.reclaimed,
            "resumed": st.resumed,
            "resumes_refused": st.resumes_refused,
            "in_flight": len(self._tasks),
            "rate_per_s": round(st.rate(now), 3),
            "started_at": st.started_at,
            "updated_at": time.time(),
            "stopping": self._stopping.is_set(),
        }
        try:
            await self.stream.publish_stats(self.consumer, json.dumps(payload))
        except Exception as exc:
            log.warning("stats_publish_failed", error=str(exc))
