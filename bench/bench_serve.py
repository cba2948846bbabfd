"""What the HTTP layer costs: latency added over ``pipeline.run``, and sustained load at concurrency 32.

One run, against one loopback model server with zero latency:

1. ``pipeline.run`` in this process on the same ticket, sequentially: the baseline.
2. The same ticket through ``triagegate serve`` (a separate process, with an API key and
   the rate limit off), sequentially over one keep-alive connection from a minimal raw
   HTTP/1.1 client, so client overhead stays small. Reported two ways: round trip minus
   the baseline's p50, and per request round trip minus the ``latency_ms`` the server's
   own ``pipeline.run`` measured (the part spent outside the pipeline: HTTP parsing,
   auth, limits, validation, serialisation, metrics, the loopback hop and the client).
3. Load from a second process (bench/load_http.py, httpx) at concurrency 32.

    .venv/bin/python bench/bench_serve.py [--samples 1000] [--load-requests 6000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import CLI, LOOPBACK, REPO, Child, machine, openai_server, percentile, write_json

KEY = "bench-key-0123456789abcdef"
TICKET = {"id": "bench-1", "text": "I was charged twice for my subscription this month."}


class RawClient:
    """Just enough HTTP/1.1 for one keep-alive connection: POST JSON, read a Content-Length body."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.sock = socket.create_connection((self.host, parts.port or 80))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = raw_head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v)
            for k, _, v in (line.partition(b":") for line in lines[1:])
            if k.lower() == b"content-length"
        )
        while len(self.buffer) < length:
            self.buffer += self._recv()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, payload

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


async def baseline(model_url: str, samples: int, warmup: int) -> list[float]:
    os.environ["TRIAGEGATE_MINI_BASE_URL"] = model_url
    os.environ["TRIAGEGATE_FLAGSHIP_BASE_URL"] = model_url
    from triagegate.pipeline import load

    times: list[float] = []
    async with load(LOOPBACK) as pipeline:
        for n in range(warmup + samples):
            started = time.perf_counter()
            outcome = await pipeline.run(TICKET)
            if n >= warmup:
                times.append((time.perf_counter() - started) * 1000)
            assert outcome.status == "ok", outcome.errors
    return times


def through_http(url: str, samples: int, warmup: int) -> tuple[list[float], list[float]]:
    client = RawClient(url)
    body = json.dumps(TICKET).encode()
    round_trips: list[float] = []
    outside: list[float] = []
    try:
        for n in range(warmup + samples):
            started = time.perf_counter()
            status, payload = client.post("/v1/tickets", body)
            elapsed = (time.perf_counter() - started) * 1000
            assert status == 200, payload
            if n >= warmup:
                round_trips.append(elapsed)
                outside.append(elapsed - json.loads(payload)["latency_ms"])
    finally:
        client.close()
    return round_trips, outside


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-requests", type=int, default=6000)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 200 samples, 1000 load requests")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.warmup, args.load_requests = 200, 20, 1000
    load_before = os.getloadavg()
    model = openai_server(0.0)
    env = {
        **os.environ,
        "TRIAGEGATE_MINI_BASE_URL": model.ready,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": model.ready,
        "TRIAGEGATE_API_KEYS": KEY,
    }
    server = None
    try:
        server = Child([CLI, "serve", str(LOOPBACK), "--port", "0", "--rate-limit", "0"], env=env)
        direct = asyncio.run(baseline(model.ready, args.samples, args.warmup))
        round_trips, outside = through_http(server.ready, args.samples, args.warmup)
        loader = subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "load_http.py"),
                server.ready,
                "--concurrency",
                str(args.concurrency),
                "--requests",
                str(args.load_requests),
                "--seconds",
                str(args.load_seconds),
                "--key",
                KEY,
            ],
            capture_output=True,
            text=True,
            timeout=args.load_seconds + 120,
        )
        if loader.returncode != 0:
            raise RuntimeError(loader.stderr)
        load_result = json.loads(loader.stdout.strip().splitlines()[-1])
        server_exit = server.terminate()
    finally:
        if server is not None:
            server.terminate()
        model.terminate()
    base, http = summary(direct), summary(round_trips)
    added = round(http["p50_ms"] - base["p50_ms"], 3)
    outside_p50 = round(statistics.median(outside), 3)
    result = {
        "pipeline_run": base,
        "http_round_trip": http,
        "added_p50_ms": added,
        "outside_pipeline_p50_ms": outside_p50,
        "target_added_p50_ms": 2.0,
        "load": {"concurrency": args.concurrency, **load_result},
        "server_exit_code": server_exit,
        "samples": args.samples,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine(),
    }
    print(f"service overhead ({args.samples} sequential requests, model latency 0)")
    print(f"{'':<36} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    print(
        f"{'pipeline.run (in process)':<36} {base['p50_ms']:>8.3f} {base['p90_ms']:>8.3f} {base['p99_ms']:>8.3f}"
    )
    print(
        f"{'POST /v1/tickets round trip':<36} {http['p50_ms']:>8.3f} {http['p90_ms']:>8.3f} {http['p99_ms']:>8.3f}"
    )
    print(f"added by HTTP (round trip p50 - pipeline p50): {added:.3f} ms (target <= 2 ms)")
    print(f"outside pipeline.run per request, p50: {outside_p50:.3f} ms")
    lr = load_result
    print(
        f"load at concurrency {args.concurrency}: {lr['requests']} requests in {lr['seconds']:.1f} s = {lr['per_second']:.1f}/s, "
        f"errors {lr['errors']}, p50 {lr['p50_ms']} ms, p99 {lr['p99_ms']} ms; statuses {lr['statuses']}"
    )
    print(f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}")
    print(f"wrote {write_json('bench_serve.json', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
