"""A closed-loop HTTP load generator: ``--concurrency`` clients each POST tickets back to back.

Run as its own process by bench_serve.py (so client work does not share the server's
interpreter); prints one JSON line with request counts, errors, throughput and latency
percentiles. Bounded by both ``--requests`` and ``--seconds``.

    python bench/load_http.py URL --concurrency 32 --requests 4000 --seconds 60 [--key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx


async def run(
    url: str, concurrency: int, requests: int, seconds: float, key: str | None
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:

        async def worker(n: int) -> None:
            nonlocal issued
            while issued < requests and time.monotonic() < deadline:
                issued += 1
                body = {"id": f"load-{n}-{issued}", "text": f"I was charged twice for order {issued}"}
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/tickets", json=body)
                    key = str(response.status_code)
                    if response.status_code == 200 and response.json().get("status") != "ok":
                        key = "200-not-ok"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[key] = statuses.get(key, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))] * 1000, 2)
            if latencies
            else 0.0
        )

    errors = sum(count for status, count in statuses.items() if status != "200")
    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--key", default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.concurrency, args.requests, args.seconds, args.key))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
