"""Queue worker throughput with 1, 2 and 4 worker processes against a model with 100 ms latency.

Each run gets a fresh stream and database. Workers are started first and wait on the
empty stream; the clock starts when the tickets are pushed and stops when the last
outcome row is committed, so process start-up is not counted. Every worker uses the same
``--concurrency``; the model server (tests/support/openai_server.py) adds ``--latency``
to every request.

    .venv/bin/python bench/bench_workers.py [--tickets 1200] [--concurrency 4] [--latency 0.1] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import CLI, LOOPBACK, Child, machine, openai_server, write_json

from triagegate.queue.redis_stream import TicketStream, connect
from triagegate.types import Ticket

REDIS_URL = os.environ.get("TRIAGEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("TRIAGEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outcomes").fetchone()
    return int(row[0]) if row else 0


async def push(stream: str, tickets: list[Ticket]) -> None:
    client = connect(REDIS_URL)
    try:
        await TicketStream(client, stream).add_tickets(tickets)
    finally:
        await client.aclose()


def one_run(workers: int, tickets: int, concurrency: int, model_url: str) -> dict[str, float]:
    tag = uuid.uuid4().hex[:10]
    db, stream = f"triagegate_bench_{tag}", f"triagegate-bench:{tag}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')  # type: ignore[arg-type]
    dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"
    env = {**os.environ, "TRIAGEGATE_MINI_BASE_URL": model_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": model_url}
    procs: list[Child] = []
    try:
        for n in range(workers):
            procs.append(
                Child(
                    [
                        CLI,
                        "worker",
                        str(LOOPBACK),
                        "--redis",
                        REDIS_URL,
                        "--stream",
                        stream,
                        "--group",
                        "bench",
                        "--results",
                        dsn,
                        "--consumer",
                        f"bench-{n}",
                        "--concurrency",
                        str(concurrency),
                    ],
                    env=env,
                )
            )
        batch = [Ticket(id=f"b-{n}", text=f"I was charged twice for order {n}") for n in range(tickets)]
        started = time.perf_counter()
        asyncio.run(push(stream, batch))
        while count_rows(dsn) < tickets:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        for proc in procs:
            code = proc.terminate()
            if code != 0:
                raise RuntimeError(f"worker exited {code}")
    finally:
        for proc in procs:
            proc.terminate()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # type: ignore[arg-type]
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{stream}*"))
        if keys:
            client.delete(*keys)
        client.close()
    return {
        "workers": workers,
        "tickets": tickets,
        "seconds": round(elapsed, 3),
        "per_second": round(tickets / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=4, help="tickets in flight per worker")
    parser.add_argument("--latency", type=float, default=0.1, help="model latency in seconds")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--quick", action="store_true", help="smoke size: 300 tickets")
    args = parser.parse_args()
    if args.quick:
        args.tickets = 300
    load_before = os.getloadavg()
    model = openai_server(args.latency)
    try:
        runs = [one_run(int(n), args.tickets, args.concurrency, model.ready) for n in args.workers.split(",")]
    finally:
        model.terminate()
    base = runs[0]["per_second"]
    print(
        f"workers throughput ({args.tickets} tickets, concurrency {args.concurrency} per worker, model latency {args.latency * 1000:.0f} ms)"
    )
    print(f"{'workers':>8} {'seconds':>9} {'tickets/s':>10} {'vs 1':>6}")
    for run in runs:
        run["speedup"] = round(run["per_second"] / base, 2)
        print(
            f"{run['workers']:>8} {run['seconds']:>9.2f} {run['per_second']:>10.1f} {run['speedup']:>5.2f}x"
        )
    path = write_json(
        "bench_workers.json",
        {
            "tickets": args.tickets,
            "concurrency": args.concurrency,
            "latency_s": args.latency,
            "runs": runs,
            "machine": machine(),
        },
    )
    print(
        f"load average before/after: {[round(v, 2) for v in load_before]} / {[round(v, 2) for v in os.getloadavg()]}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
