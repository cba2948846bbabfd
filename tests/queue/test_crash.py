"""5,000 tickets, three worker processes, one killed with SIGKILL mid-run: nothing lost, nothing doubled.

The killed worker's unacknowledged entries sit in the group's pending list until a live
worker reclaims them (short ``--claim-idle``); the upsert makes a ticket it had already
written but not acknowledged land on the same row. Ten rows are bad at enqueue and
pushed as poison: they, and only they, end up in the dead-letter stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.queue.conftest import LOOPBACK
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("triagegate"))
TICKETS = 5_000
POISON = 10


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outcomes").fetchone()
    return int(row[0]) if row else 0


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_sigkilled_worker_loses_and_duplicates_nothing(
    tmp_path: Path, redis_url: str, stream_name: str, database: str
) -> None:
    source = tmp_path / "tickets.jsonl"
    with source.open("w") as out:
        for n in range(TICKETS):
            out.write(json.dumps({"id": f"k-{n:05d}", "text": f"I was charged twice, order {n}"}) + "\n")
            if n % (TICKETS // POISON) == 7:
                out.write(json.dumps({"id": f"poison-{n}", "txt": "misspelt field"}) + "\n")
    common = ["--redis", redis_url, "--stream", stream_name]
    enqueued = subprocess.run(
        [CLI, "enqueue", str(LOOPBACK), str(source), *common, "--poison"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert enqueued.returncode == 0, enqueued.stderr
    assert f"pushed {TICKETS} tickets" in enqueued.stdout and f"{POISON} pushed as poison" in enqueued.stdout

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    workers: list[subprocess.Popen[str]] = []
    with OpenAIServer(record=False) as server:
        env = {
            **os.environ,
            "TRIAGEGATE_MINI_BASE_URL": server.base_url,
            "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url,
        }
        try:
            for n in range(3):
                workers.append(
                    subprocess.Popen(
                        [
                            CLI,
                            "worker",
                            str(LOOPBACK),
                            *common,
                            "--group",
                            "crash",
                            "--results",
                            database,
                            "--consumer",
                            f"w{n}",
                            "--concurrency",
                            "8",
                            "--claim-idle",
                            "1",
                            "--max-deliveries",
                            "3",
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env,
                    )
                )
            for proc in workers:
                assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
            wait_for(lambda: count_rows(database) >= TICKETS // 3, 180, "a third of the outcomes")
            workers[0].send_signal(signal.SIGKILL)
            assert workers[0].wait(timeout=10) == -signal.SIGKILL
            orphaned = client.xpending_range(stream_name, "crash", "-", "+", 1000, consumername="w0")
            assert orphaned, "the killed worker held unacknowledged entries"
            wait_for(lambda: count_rows(database) == TICKETS, 300, "every outcome")
            wait_for(
                lambda: client.xpending(stream_name, "crash")["pending"] == 0, 60, "an empty pending list"
            )
            for proc in workers[1:]:
                proc.send_signal(signal.SIGTERM)
            summaries = []
            for proc in workers[1:]:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                summaries.append(err)
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    with psycopg.connect(database) as conn:
        ids = [r[0] for r in conn.execute("SELECT ticket_id FROM outcomes")]
        statuses = dict(conn.execute("SELECT status, count(*) FROM outcomes GROUP BY status").fetchall())
        rewritten = conn.execute("SELECT count(*) FROM outcomes WHERE writes > 1").fetchone()
    assert sorted(ids) == [f"k-{n:05d}" for n in range(TICKETS)], "exactly one row per ticket, none lost"
    assert statuses == {"ok": TICKETS}
    dead = client.xrange(f"{stream_name}:dead")
    client.close()
    assert len(dead) == POISON
    assert all(fields["error"].startswith("bad row pushed as poison") for _, fields in dead)
    assert sum("reclaimed" in s for s in summaries) == 2
    reclaimed = sum(int(s.split(" reclaimed")[0].rsplit(", ", 1)[1]) for s in summaries)
    assert reclaimed >= len(orphaned), summaries
    print(
        f"\nreclaimed {reclaimed} entries from the killed worker; {rewritten[0] if rewritten else 0} rows written twice"
    )
