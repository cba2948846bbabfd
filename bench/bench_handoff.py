"""Human handoff end to end (issue 14): 1,000 tickets, about 10% handed to a person, then all resumed.

Twice, each on fresh storage, against the loopback OpenAI-compatible server (its own process,
no added latency), with ``tests/graphs/handoff_bench.yaml`` (a ticket that is the customer's
second message in its thread goes to a person; every 10th ticket carries an earlier message):

* **serve**: one ``triagegate serve`` process on a SQLite checkpoint file. The tickets are
  posted 16 at a time; the pending handoffs are read back with ``GET /v1/handoffs`` and each
  is resumed with ``POST /v1/handoffs/{id}`` one after another (the resume latency is the
  client's, request to response); each is then resumed a second time, which must be refused.
* **workers**: two ``triagegate worker`` processes sharing one PostgreSQL database for the
  outcomes and the checkpoints. The tickets are pushed to the stream; once every outcome is
  committed, one resume entry per handoff is pushed, and again a second one each (the losers
  must be dead-lettered). The resume latency is the worker's (``Outcome.latency_ms``).

Checked in each: no ticket lost (every ticket has one final outcome, every handoff is listed
and answered by a person), none duplicated (each handoff answered once: the second resumes
are all refused, and no ticket has more outcomes than expected). Reported: resume latency
p50/p99, checkpoint bytes per ticket (what the checkpoint tables hold, over all tickets and
per handed-off ticket), and the CPU a ticket costs in-process with the checkpointer against
the same graph without a handoff rule, measured in the same run.

    .venv/bin/python bench/bench_handoff.py [--tickets 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import CLI, REPO, Child, machine, openai_server, percentile, write_json

import triagegate
from triagegate.queue.redis_stream import TicketStream, connect
from triagegate.types import HumanAnswer, Ticket, Turn

GRAPH = REPO / "tests" / "graphs" / "handoff_bench.yaml"
PLAIN = REPO / "tests" / "graphs" / "loopback_openai.yaml"
REDIS_URL = os.environ.get("TRIAGEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("TRIAGEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
KEY = "bench-key-0123456789abcdef"


def make_tickets(count: int, tag: str) -> list[Ticket]:
    """Every 10th ticket is a follow-up (one earlier customer message): those hand off."""
    out = []
    for n in range(count):
        earlier = (
            [Turn(role="customer", content=f"About order {n}: it has not arrived.")] if n % 10 == 0 else []
        )
        out.append(Ticket(id=f"{tag}-{n:05d}", text=f"Where is my parcel? Order {n}.", messages=earlier))
    return out


def expected_handoffs(tickets: list[Ticket]) -> set[str]:
    return {t.id for t in tickets if t.messages}


def summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p99_ms": round(percentile(latencies_ms, 99), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2) if latencies_ms else float("nan"),
    }


def sqlite_bytes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        checkpoints = conn.execute(
            "SELECT coalesce(sum(length(checkpoint) + length(metadata)), 0), count(*) FROM checkpoints"
        ).fetchone()
        writes = conn.execute("SELECT coalesce(sum(length(value)), 0), count(*) FROM writes").fetchone()
        index = conn.execute(
            "SELECT coalesce(sum(length(ticket) + length(outcome)), 0) FROM triagegate_handoffs"
        ).fetchone()
    return {
        "checkpoint_bytes": int(checkpoints[0]) + int(writes[0]),
        "checkpoints": int(checkpoints[1]),
        "writes": int(writes[1]),
        "index_bytes": int(index[0]),
        "file_bytes": path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "-*")),
    }


def postgres_bytes(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:

        def total(sql: str) -> int:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            return int(row[0]) if row and row[0] is not None else 0

        checkpoint = total(
            "SELECT sum(pg_column_size(checkpoint) + pg_column_size(metadata)) FROM checkpoints"
        )
        blobs = total("SELECT sum(pg_column_size(blob)) FROM checkpoint_blobs")
        writes = total("SELECT sum(pg_column_size(blob)) FROM checkpoint_writes")
        return {
            "checkpoint_bytes": checkpoint + blobs + writes,
            "checkpoints": total("SELECT count(*) FROM checkpoints"),
            "writes": total("SELECT count(*) FROM checkpoint_writes"),
            "index_bytes": total(
                "SELECT sum(pg_column_size(ticket) + pg_column_size(outcome)) FROM triagegate_handoffs"
            ),
        }


def run_serve(tickets: list[Ticket], model_url: str, workdir: Path) -> dict[str, Any]:
    checkpoints = workdir / "serve-checkpoints.sqlite"
    env = {
        **os.environ,
        "TRIAGEGATE_MINI_BASE_URL": model_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": model_url,
        "TRIAGEGATE_API_KEYS": KEY,
        "TRIAGEGATE_CHECKPOINTS": str(checkpoints),
        "TRIAGEGATE_LOG_LEVEL": "WARNING",
    }
    child = Child([CLI, "serve", str(GRAPH), "--port", "0", "--rate-limit", "0"], env=env)
    url = child.ready
    try:

        async def post_all() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
            ) as c:
                slots = asyncio.Semaphore(16)

                async def one(ticket: Ticket) -> dict[str, Any]:
                    async with slots:
                        reply = await c.post(
                            "/v1/tickets",
                            content=ticket.model_dump_json(),
                            headers={"Content-Type": "application/json"},
                        )
                        reply.raise_for_status()
                        body: dict[str, Any] = reply.json()
                        return body

                return await asyncio.gather(*(one(t) for t in tickets))

        started = time.perf_counter()
        outcomes = asyncio.run(post_all())
        run_s = time.perf_counter() - started
        paused = {o["ticket_id"] for o in outcomes if o["status"] == "awaiting_human"}
        other = {o["status"] for o in outcomes if o["status"] != "awaiting_human"}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            listed: list[str] = []
            while True:
                page = client.get("/v1/handoffs", params={"limit": 500, "offset": len(listed)}).json()[
                    "handoffs"
                ]
                listed += [h["thread_id"] for h in page]
                if len(page) < 500:
                    break
            latencies, answered = [], 0
            for thread in listed:
                sent = time.perf_counter()
                done = client.post(
                    f"/v1/handoffs/{thread}", json={"action": "edit", "text": f"Answered {thread}."}
                )
                latencies.append((time.perf_counter() - sent) * 1000)
                if done.status_code == 200 and done.json()["route"] == "human":
                    answered += 1
            refused = sum(
                client.post(f"/v1/handoffs/{t}", json={"action": "approve"}).status_code == 409
                for t in listed
            )
            left = client.get("/v1/handoffs").json()["handoffs"]
    finally:
        child.terminate()
    stored = sqlite_bytes(checkpoints)
    return {
        "tickets": len(tickets),
        "outcomes": len(outcomes),
        "other_statuses": sorted(other),
        "handed_off": len(paused),
        "expected_handoffs": len(expected_handoffs(tickets)),
        "listed": len(listed),
        "listed_matches_paused": set(listed) == paused == expected_handoffs(tickets),
        "answered_by_a_person": answered,
        "second_resumes_refused": refused,
        "pending_after": len(left),
        "lost": len(paused - set(listed)) + (len(listed) - answered),
        "duplicated": len(listed) - len(set(listed)) + (len(listed) - refused),
        "run_s": round(run_s, 2),
        "resume_client": summary(latencies),
        **stored,
        "checkpoint_bytes_per_ticket": round(stored["checkpoint_bytes"] / len(tickets)),
    }


async def push(
    stream: str, tickets: list[Ticket] | None = None, resumes: list[tuple[str, str]] | None = None
) -> None:
    client = connect(REDIS_URL)
    try:
        queue = TicketStream(client, stream)
        if tickets:
            await queue.add_tickets(tickets)
        for thread, text in resumes or []:
            await queue.add_resume(thread, HumanAnswer(action="answer", text=text))
    finally:
        await client.aclose()


def rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(
            conn.execute(
                "SELECT ticket_id, status, route, writes, (outcome->>'latency_ms')::float FROM outcomes"
            )
        )


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def dead_letters(stream: str) -> int:
    async def go() -> int:
        client = connect(REDIS_URL)
        try:
            return int(await client.xlen(f"{stream}:dead"))
        finally:
            await client.aclose()

    return asyncio.run(go())


def run_workers(tickets: list[Ticket], model_url: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    db, stream = f"triagegate_bench_{tag}", f"triagegate-bench:{tag}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')  # type: ignore[arg-type]
    dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"
    env = {
        **os.environ,
        "TRIAGEGATE_MINI_BASE_URL": model_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": model_url,
        "TRIAGEGATE_LOG_LEVEL": "WARNING",
    }
    env.pop("TRIAGEGATE_CHECKPOINTS", None)
    workers: list[Child] = []
    try:
        for n in range(2):
            args = [CLI, "worker", str(GRAPH), "--redis", REDIS_URL, "--stream", stream, "--results", dsn]
            workers.append(Child([*args, "--consumer", f"bench-{n}", "--concurrency", "8"], env=env))
        started = time.perf_counter()
        asyncio.run(push(stream, tickets=tickets))
        if not wait_for(lambda: len(rows(dsn)) >= len(tickets), 600):
            raise RuntimeError("the workers did not write every outcome in 10 minutes")
        run_s = time.perf_counter() - started
        first = {r[0]: r for r in rows(dsn)}
        paused = sorted(t for t, r in first.items() if r[1] == "awaiting_human")
        asyncio.run(push(stream, resumes=[(t, f"Answered {t}.") for t in paused]))
        asyncio.run(push(stream, resumes=[(t, f"Again {t}.") for t in paused]))

        def settled() -> bool:
            return dead_letters(stream) >= len(paused) and sum(r[2] == "human" for r in rows(dsn)) >= len(
                paused
            )

        if not wait_for(settled, 300):
            raise RuntimeError("the workers did not apply every resume in 5 minutes")
        time.sleep(1.0)
        final = {r[0]: r for r in rows(dsn)}
        refused = dead_letters(stream)
    finally:
        for child in workers:
            child.terminate()
    stored = postgres_bytes(dsn)
    with psycopg.connect(dsn) as conn:
        resolved = conn.execute(
            "SELECT count(*) FROM triagegate_handoffs WHERE status = 'resolved'"
        ).fetchone()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # type: ignore[arg-type]
    humans = [r for r in final.values() if r[2] == "human"]
    expected = expected_handoffs(tickets)
    return {
        "tickets": len(tickets),
        "outcomes": len(final),
        "handed_off": len(paused),
        "expected_handoffs": len(expected),
        "paused_matches_expected": set(paused) == expected,
        "answered_by_a_person": len(humans),
        "resolved_in_index": int(resolved[0]) if resolved else 0,
        "second_resumes_refused": refused,
        "lost": len(tickets) - len(final) + len(paused) - len(humans),
        "duplicated": (refused - len(paused) if refused > len(paused) else len(paused) - refused)
        + sum(1 for r in final.values() if r[3] > (2 if r[0] in expected else 1)),
        "run_s": round(run_s, 2),
        "resume_worker": summary([float(r[4]) for r in humans]),
        **stored,
        "checkpoint_bytes_per_ticket": round(stored["checkpoint_bytes"] / len(tickets)),
    }


def cpu_per_ticket(model_url: str, count: int, workdir: Path) -> dict[str, float]:
    """CPU per ticket in-process: the graph without a handoff rule (no checkpointer) against the
    handoff graph (every run checkpointed) on tickets that do not hand off, alternating rounds."""
    env = {"TRIAGEGATE_MINI_BASE_URL": model_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": model_url}
    tickets = [Ticket(id=f"cpu-{n}", text=f"Where is my parcel? Order {n}.") for n in range(count)]
    results: dict[str, list[float]] = {"plain": [], "checkpointed": []}

    async def one_round(graph: Path, key: str, round_no: int) -> None:
        store = workdir / f"cpu-{round_no}-{key}.sqlite"
        async with triagegate.load(graph, environ=env, checkpoints=store, cache_dir=workdir) as pipeline:
            await pipeline.run(Ticket(text="warm up"))
            mine = [t.model_copy(update={"id": f"{t.id}-{round_no}"}) for t in tickets]
            cpu = time.process_time()
            for ticket in mine:
                await pipeline.run(ticket)
            results[key].append((time.process_time() - cpu) / len(mine) * 1000)

    for round_no in range(3):
        asyncio.run(one_round(PLAIN, "plain", round_no))
        asyncio.run(one_round(GRAPH, "checkpointed", round_no))
    plain, kept = statistics.median(results["plain"]), statistics.median(results["checkpointed"])
    return {
        "plain_cpu_ms": round(plain, 3),
        "checkpointed_cpu_ms": round(kept, 3),
        "ratio": round(kept / plain, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--cpu-tickets", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="200 tickets, 50 for the CPU comparison")
    args = parser.parse_args()
    if args.quick:
        args.tickets, args.cpu_tickets = 200, 50
    load_before = os.getloadavg()[0]
    server = openai_server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            served = run_serve(make_tickets(args.tickets, "s"), server.ready, work)
            queued = run_workers(make_tickets(args.tickets, "w"), server.ready)
            cpu = cpu_per_ticket(server.ready, args.cpu_tickets, work)
    finally:
        server.terminate()
    report = {
        "machine": machine(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "serve": served,
        "workers": queued,
        "cpu": cpu,
    }
    print(f"{'':28} {'serve':>12} {'2 workers':>12}")
    for key in (
        "tickets",
        "handed_off",
        "answered_by_a_person",
        "second_resumes_refused",
        "lost",
        "duplicated",
        "run_s",
        "checkpoint_bytes_per_ticket",
        "checkpoints",
        "writes",
        "index_bytes",
    ):
        print(f"{key:28} {served.get(key, '-')!s:>12} {queued.get(key, '-')!s:>12}")
    rc, rw = served["resume_client"], queued["resume_worker"]
    print(
        f"{'resume p50 / p99 ms':28} {rc['p50_ms']:>5} / {rc['p99_ms']:<5} {rw['p50_ms']:>5} / {rw['p99_ms']:<5}"
        "  (serve: client round trip; workers: the worker's resume)"
    )
    print(
        f"CPU per ticket in-process: no handoff rule {cpu['plain_cpu_ms']} ms, "
        f"with the checkpointer {cpu['checkpointed_cpu_ms']} ms ({cpu['ratio']}x)"
    )
    print(f"load average {report['load_before']} before, {report['load_after']} after")
    print(f"wrote {write_json('bench_handoff.json', report)}")


if __name__ == "__main__":
    main()
