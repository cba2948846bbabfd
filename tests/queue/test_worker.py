"""Workers on real Redis streams and PostgreSQL: ack after commit, reclaiming, dead letters, stopping."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.queue.conftest import LOOPBACK, QueueEnv, scripted_pipeline, triage_reply
from tests.support.openai_server import OpenAIServer
from triagegate.models.base import ChatRequest
from triagegate.queue.status import queue_status, render
from triagegate.queue.worker import Worker, WorkerSettings
from triagegate.store.postgres import OutcomeStore
from triagegate.types import Outcome, Ticket


def rows(dsn: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT ticket_id, status, writes FROM outcomes")}


def settings(**overrides: object) -> WorkerSettings:
    base: dict[str, object] = {
        "consumer": "w1",
        "concurrency": 4,
        "claim_idle_s": 0.3,
        "max_deliveries": 3,
        "block_ms": 100,
        "stats_every_s": 0.1,
        "exit_when_idle_s": 1.0,
    }
    base.update(overrides)
    return WorkerSettings(**base)  # type: ignore[arg-type]


async def pending(env: QueueEnv) -> int:
    info = await env.redis.xpending(env.stream.stream, env.stream.group)
    return int(info["pending"])


async def test_worker_writes_every_outcome_then_acks(queue_env: QueueEnv) -> None:
    tickets = [Ticket(id=f"t-{n}", text=f"charged twice, case {n}") for n in range(40)]
    await queue_env.stream.add_tickets(tickets)
    pipeline = scripted_pipeline()
    stats = await Worker(pipeline, queue_env.stream, queue_env.store, settings()).run()
    assert stats.processed == 40 and stats.dead == 0 and stats.errors == 0
    written = rows(queue_env.dsn)
    assert set(written) == {t.id for t in tickets}
    assert {status for status, _ in written.values()} == {"ok"}
    assert await pending(queue_env) == 0
    assert await queue_env.redis.xlen(queue_env.stream.dead) == 0


async def test_poison_goes_straight_to_the_dead_letter_stream(queue_env: QueueEnv) -> None:
    await queue_env.stream.add_tickets([Ticket(id="good", text="hello")])
    await queue_env.stream.add_poison('{"txt": "typo"}', "line 2: text: Field required")
    await queue_env.redis.xadd(queue_env.stream.stream, {"ticket": '{"id": "x", "text": ""}'})
    await queue_env.redis.xadd(queue_env.stream.stream, {"something": "else"})
    kinds = ("bad row pushed as poison at enqueue: line 2", "does not validate", "has no 'ticket' field")
    stats = await Worker(scripted_pipeline(), queue_env.stream, queue_env.store, settings()).run()
    assert (stats.processed, stats.dead) == (1, 3)
    dead = await queue_env.redis.xrange(queue_env.stream.dead)
    # Entries are handled concurrently, so dead letters may land in any order.
    by_error = {next(k for k in kinds if k in fields["error"]): fields for _, fields in dead}
    assert set(by_error) == set(kinds)
    assert all(fields["deliveries"] == "1" and fields["consumer"] == "w1" for _, fields in dead)
    poison = by_error["bad row pushed as poison at enqueue: line 2"]
    assert poison["poison"] == '{"txt": "typo"}', "the original entry travels with the dead letter"
    assert set(rows(queue_env.dsn)) == {"good"}
    assert await pending(queue_env) == 0


async def test_a_ticket_the_pipeline_refuses_is_a_failed_outcome_not_a_dead_letter(
    queue_env: QueueEnv,
) -> None:
    await queue_env.stream.add_tickets([Ticket(id="long", text="x" * 20_001)])
    stats = await Worker(scripted_pipeline(), queue_env.stream, queue_env.store, settings()).run()
    assert (stats.processed, stats.failed_outcomes, stats.dead) == (1, 1, 0)
    assert rows(queue_env.dsn)["long"][0] == "failed"


async def test_entries_of_a_dead_consumer_are_reclaimed_and_processed(queue_env: QueueEnv) -> None:
    await queue_env.stream.ensure_group()
    await queue_env.stream.add_tickets([Ticket(id=f"r-{n}", text="hello") for n in range(5)])
    taken = await queue_env.stream.read("ghost", 5, 100)
    assert len(taken) == 5
    stats = await Worker(scripted_pipeline(), queue_env.stream, queue_env.store, settings()).run()
    assert (stats.processed, stats.reclaimed) == (5, 5)
    assert set(rows(queue_env.dsn)) == {f"r-{n}" for n in range(5)}
    assert await pending(queue_env) == 0


async def test_redelivery_after_a_commit_updates_the_same_row(queue_env: QueueEnv) -> None:
    await queue_env.stream.ensure_group()
    await queue_env.stream.add_tickets([Ticket(id="dup", text="hello")])
    entry = (await queue_env.stream.read("crashed-after-commit", 1, 100))[0]
    pipeline = scripted_pipeline()
    await queue_env.store.upsert(await pipeline.run(entry.ticket()))
    stats = await Worker(pipeline, queue_env.stream, queue_env.store, settings()).run()
    assert stats.processed == 1
    assert rows(queue_env.dsn) == {"dup": ("ok", 2)}


async def test_too_many_deliveries_go_to_dead_letters_with_the_last_error(queue_env: QueueEnv) -> None:
    class FailingStore(OutcomeStore):
        """A store whose writes fail: the fault being tested."""

        async def upsert(self, outcome: Outcome) -> None:
            raise ConnectionError("database went away")

    await queue_env.stream.add_tickets([Ticket(id="doomed", text="hello")])
    failing = FailingStore(queue_env.dsn)
    tuned = settings(max_deliveries=2, exit_when_idle_s=1.5, store_pause_s=0.01)
    stats = await Worker(scripted_pipeline(), queue_env.stream, failing, tuned).run()
    assert stats.dead == 1
    assert stats.errors == 2, "delivered twice, failed twice, dead on the third delivery"
    dead = await queue_env.redis.xrange(queue_env.stream.dead)
    assert dead[0][1]["deliveries"] == "3"
    assert (
        dead[0][1]["error"] == "gave up after 2 deliveries; last error: ConnectionError: database went away"
    )
    assert await pending(queue_env) == 0
    assert await queue_env.redis.hlen(queue_env.stream.errors) == 0


async def test_dead_consumer_entries_without_errors_are_dead_lettered_after_max_deliveries(
    queue_env: QueueEnv,
) -> None:
    await queue_env.stream.ensure_group()
    await queue_env.stream.add_tickets([Ticket(id="stuck", text="hello")])
    await queue_env.stream.read("ghost", 1, 100)
    stats = await Worker(
        scripted_pipeline(), queue_env.stream, queue_env.store, settings(max_deliveries=1)
    ).run()
    assert (stats.processed, stats.dead) == (0, 1)
    dead = await queue_env.redis.xrange(queue_env.stream.dead)
    assert "no error was recorded" in dead[0][1]["error"]


async def test_stop_finishes_in_flight_tickets_and_acks_them(queue_env: QueueEnv) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(_request: ChatRequest) -> str:
        started.set()
        await release.wait()
        return triage_reply()

    await queue_env.stream.add_tickets([Ticket(id=f"s-{n}", text="hello") for n in range(10)])
    worker = Worker(
        scripted_pipeline(mini=slow), queue_env.stream, queue_env.store, settings(exit_when_idle_s=None)
    )
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.sleep(0.3)
    assert not running.done(), "it waits for the tickets in flight"
    release.set()
    stats = await asyncio.wait_for(running, 10)
    assert stats.processed == 4, "the four in flight (concurrency 4) finished; nothing new was read"
    assert len(rows(queue_env.dsn)) == 4
    assert await pending(queue_env) == 0
    assert await queue_env.redis.xlen(queue_env.stream.stream) == 10


async def test_long_tickets_are_kept_alive_instead_of_reclaimed(queue_env: QueueEnv) -> None:
    async def slow(_request: ChatRequest) -> str:
        await asyncio.sleep(1.2)
        return triage_reply()

    await queue_env.stream.add_tickets([Ticket(id="slow", text="hello")])
    slow_worker = Worker(
        scripted_pipeline(mini=slow), queue_env.stream, queue_env.store, settings(consumer="slow")
    )
    other = Worker(scripted_pipeline(), queue_env.stream, queue_env.store, settings(consumer="other"))
    first = asyncio.create_task(slow_worker.run())
    await asyncio.sleep(0.2)
    results = await asyncio.gather(first, other.run())
    assert [s.processed for s in results] == [1, 0]
    assert results[1].reclaimed == 0
    assert rows(queue_env.dsn) == {"slow": ("ok", 1)}


async def test_status_reports_lag_pending_dead_letters_and_consumers(queue_env: QueueEnv) -> None:
    report = await queue_status(queue_env.stream)
    assert (report.length, report.group_exists, report.lag) == (0, False, 0)
    await queue_env.stream.add_tickets([Ticket(id=f"q-{n}", text="hello") for n in range(6)])
    await queue_env.stream.add_poison("junk", "not JSON")
    await queue_env.stream.ensure_group()
    await queue_env.stream.read("ghost", 2, 100)
    report = await queue_status(queue_env.stream)
    assert (report.length, report.lag, report.pending) == (7, 5, 2)
    stats = await Worker(
        scripted_pipeline(), queue_env.stream, queue_env.store, settings(claim_idle_s=60)
    ).run()
    assert (stats.processed, stats.dead) == (4, 1)
    report = await queue_status(queue_env.stream)
    assert (report.lag, report.pending, report.dead_letters) == (0, 2, 1)
    by_name = {c.name: c for c in report.consumers}
    assert by_name["ghost"].pending == 2
    assert by_name["w1"].processed == 4 and by_name["w1"].dead == 1
    text = render(report)
    assert "dead letters 1" in text and "ghost" in text and "w1" in text
    assert json.loads(report.model_dump_json())["consumers"]


@pytest.mark.parametrize("concurrency", [0])
def test_settings_are_validated(concurrency: int) -> None:
    with pytest.raises(ValueError):
        WorkerSettings(concurrency=concurrency)


async def test_keep_alive_never_takes_back_an_entry_another_worker_reclaimed(queue_env: QueueEnv) -> None:
    await queue_env.stream.ensure_group()
    await queue_env.stream.add_tickets([Ticket(id="k", text="hello")])
    entry = (await queue_env.stream.read("stalled", 1, 100))[0]
    await asyncio.sleep(0.05)
    _, claimed = await queue_env.stream.claim("rescuer", 10, 10)
    assert [e.id for e in claimed] == [entry.id] and claimed[0].deliveries == 2
    await queue_env.stream.keep_alive("stalled", [entry.id])
    owner = await queue_env.redis.xpending_range(
        queue_env.stream.stream, queue_env.stream.group, "-", "+", 10
    )
    assert [(p["consumer"], p["times_delivered"]) for p in owner] == [("rescuer", 2)]
    await queue_env.stream.keep_alive("rescuer", [entry.id])
    owner = await queue_env.redis.xpending_range(
        queue_env.stream.stream, queue_env.stream.group, "-", "+", 10
    )
    assert [(p["consumer"], p["times_delivered"]) for p in owner] == [("rescuer", 2)], "JUSTID is no delivery"


CLI = str(Path(sys.executable).with_name("triagegate"))


def test_a_worker_that_cannot_reach_postgresql_says_so_in_one_line_and_quickly() -> None:
    """Regression: this took 31 s and printed the pool's retry warnings before its error."""
    started = time.monotonic()
    done = subprocess.run(
        [
            CLI,
            "worker",
            str(LOOPBACK),
            "--results",
            "postgresql://postgres:hunter2secret@127.0.0.1:1/x",
            "--redis",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot use PostgreSQL at postgresql://postgres:***@127.0.0.1:1/x: ")
    assert "hunter2secret" not in done.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


async def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    """A port that accepts connections but never speaks PostgreSQL: open() gives up after
    connect_timeout, not after the pool's 30 s wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            await OutcomeStore(dsn, connect_timeout=2).open()
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f} s"


async def test_a_crashing_ticket_is_logged_with_its_traceback(queue_env: QueueEnv) -> None:
    import io

    from triagegate import log

    def explode(_request: ChatRequest) -> str:
        raise RuntimeError("worker-side crash")

    stream = io.StringIO()
    log.configure("WARNING", json=True, stream=stream)
    try:
        await queue_env.stream.add_tickets([Ticket(id="crash-1", text="hello")])
        await Worker(
            scripted_pipeline(explode), queue_env.stream, queue_env.store, settings(max_deliveries=1)
        ).run()
    finally:
        log.reset()
    failed = [json.loads(x) for x in stream.getvalue().splitlines() if '"entry_failed"' in x]
    assert failed, stream.getvalue()
    assert failed[0]["exception"][0]["exc_value"] == "worker-side crash"
    assert failed[0]["exception"][0]["frames"][-1]["name"] == "explode"


async def test_an_entry_is_dead_lettered_once_even_when_two_workers_hold_it(queue_env: QueueEnv) -> None:
    """Regression: a worker stalled past claim_idle and the one that reclaimed its poison entry
    both added a dead letter (the crash test saw 11 for 10 poison rows under load)."""
    await queue_env.stream.add_poison('{"txt": "typo"}', "line 1: no text")
    await queue_env.stream.ensure_group()
    (entry,) = await queue_env.stream.read("w1", 1, 100)
    _, claimed = await queue_env.stream.claim("w2", 0, 1, "0-0")
    assert [e.id for e in claimed] == [entry.id]
    first = await queue_env.stream.dead_letter(entry, "poison", "w1")
    second = await queue_env.stream.dead_letter(claimed[0], "poison", "w2")
    assert (first, second) == (True, False)
    assert await queue_env.redis.xlen(queue_env.stream.dead) == 1
    assert await pending(queue_env) == 0


def test_a_worker_that_cannot_reach_redis_never_says_ready(database: str) -> None:
    done = subprocess.run(
        [CLI, "worker", str(LOOPBACK), "--results", database, "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == "", "READY is printed only once both services answered"
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")


async def test_shadow_verdicts_of_worker_tickets_are_written_before_the_worker_returns(
    queue_env: QueueEnv, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    import triagegate
    from tests.test_shadow import environ, shadow_graph
    from triagegate.store.postgres import read

    openai_server.code_confidence = 0.95
    tickets = [Ticket(id=f"s-{n}", text=f"charged twice, case {n}") for n in range(6)]
    await queue_env.stream.add_tickets(tickets)
    async with triagegate.load(shadow_graph(tmp_path), environ=environ(openai_server)) as pipeline:
        stats = await Worker(pipeline, queue_env.stream, queue_env.store, settings()).run()
        assert pipeline.shadows is not None and pipeline.shadows.pending == 0
    assert stats.processed == 6
    snapshot = read(queue_env.dsn)
    assert sorted(s.outcome.ticket_id for s in snapshot.outcomes) == sorted(t.id for t in tickets)
    assert sorted(lab.ticket_id for lab in snapshot.labels) == sorted(t.id for t in tickets)
    assert {lab.acceptable for lab in snapshot.labels} == {False}
    assert [g.targets for g in snapshot.graphs] == [{"mini": 0.9}]
    assert openai_server.model_counts == {"mini-model": 6, "flagship-model": 6}
