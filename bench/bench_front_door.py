"""What the OpenAI-compatible front door costs over ``/v1/tickets``: the same ticket, the same run.

One ``triagegate serve`` process (API key on, rate limit off) in front of one loopback model
server with zero latency, so the model time is fixed. Two keep-alive connections from a
minimal raw HTTP/1.1 client (bench/bench_serve.py's) send the same ticket text, one as a
``/v1/tickets`` JSON ticket, the other as a ``/v1/chat/completions`` request with a system
message and one earlier turn (what an OpenAI client sends), in blocks whose order alternates
(A B, B A, ...) so drift in the machine's load falls on both alike. Per route: round-trip p50/p99, the part outside
the server's own ``pipeline.run`` (round trip minus the Outcome's ``latency_ms``) and the
service process's CPU per request (``/proc/<pid>/stat``). Prints the ratios front door /
tickets and writes ``bench/out/bench_front_door.json``.

    .venv/bin/python bench/bench_front_door.py [--samples 2000] [--blocks 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import CLI, LOOPBACK, Child, machine, openai_server, percentile, write_json
from bench.bench_serve import KEY, RawClient

TEXT = "I was charged twice for my subscription this month."
TICKET = json.dumps({"text": TEXT}).encode()
CHAT = json.dumps(
    {
        "model": "triagegate/loopback",
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant."},
            {"role": "user", "content": "Hello, I have a billing question."},
            {"role": "assistant", "content": "Sure, what happened?"},
            {"role": "user", "content": TEXT},
        ],
        "temperature": 0.2,
    }
).encode()
ROUTES = {"/v1/tickets": TICKET, "/v1/chat/completions": CHAT}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_latency_ms(route: str, payload: bytes) -> float:
    body = json.loads(payload)
    value = body["latency_ms"] if route == "/v1/tickets" else body["triagegate"]["latency_ms"]
    return float(value)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="requests per route")
    parser.add_argument("--blocks", type=int, default=100, help="alternating blocks per route")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 200 samples in 10 blocks")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.blocks, args.warmup = 200, 10, 20
    load_before = os.getloadavg()
    model = openai_server(0.0)
    env = {
        **os.environ,
        "TRIAGEGATE_MINI_BASE_URL": model.ready,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": model.ready,
        "TRIAGEGATE_API_KEYS": KEY,
    }
    server = None
    trips: dict[str, list[float]] = {route: [] for route in ROUTES}
    outside: dict[str, list[float]] = {route: [] for route in ROUTES}
    cpu: dict[str, float] = dict.fromkeys(ROUTES, 0.0)
    try:
        server = Child([CLI, "serve", str(LOOPBACK), "--port", "0", "--rate-limit", "0"], env=env)
        clients = {route: RawClient(server.ready) for route in ROUTES}
        for route, client in clients.items():
            for _ in range(args.warmup):
                status, payload = client.post(route, ROUTES[route])
                assert status == 200, payload
        per_block = max(1, args.samples // args.blocks)
        order = list(clients.items())
        for _ in range(args.blocks):
            order.reverse()
            for route, client in order:
                cpu_before = cpu_seconds(server.proc.pid)
                for _ in range(per_block):
                    started = time.perf_counter()
                    status, payload = client.post(route, ROUTES[route])
                    elapsed = (time.perf_counter() - started) * 1000
                    assert status == 200, payload
                    trips[route].append(elapsed)
                    outside[route].append(elapsed - server_latency_ms(route, payload))
                cpu[route] += cpu_seconds(server.proc.pid) - cpu_before
        for client in clients.values():
            client.close()
        server_exit = server.terminate()
    finally:
        if server is not None:
            server.terminate()
        model.terminate()
    rows = {
        route: {
            "round_trip": summary(trips[route]),
            "outside_pipeline_p50_ms": round(statistics.median(outside[route]), 3),
            "server_cpu_ms_per_request": round(cpu[route] * 1000 / len(trips[route]), 3),
            "requests": len(trips[route]),
        }
        for route in ROUTES
    }
    tickets, door = rows["/v1/tickets"], rows["/v1/chat/completions"]
    result = {
        "routes": rows,
        "ratio_p50": round(door["round_trip"]["p50_ms"] / tickets["round_trip"]["p50_ms"], 3),
        "ratio_p99": round(door["round_trip"]["p99_ms"] / tickets["round_trip"]["p99_ms"], 3),
        "ratio_cpu": round(door["server_cpu_ms_per_request"] / tickets["server_cpu_ms_per_request"], 3),
        "added_p50_ms": round(door["round_trip"]["p50_ms"] - tickets["round_trip"]["p50_ms"], 3),
        "server_exit_code": server_exit,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine(),
    }
    print(f"front door vs /v1/tickets ({args.samples} requests each in {args.blocks} alternating blocks)")
    print(f"{'':<24} {'p50 ms':>8} {'p99 ms':>8} {'outside p50':>12} {'CPU ms/req':>11}")
    for route, row in rows.items():
        rt = row["round_trip"]
        print(
            f"{route:<24} {rt['p50_ms']:>8.3f} {rt['p99_ms']:>8.3f} "
            f"{row['outside_pipeline_p50_ms']:>12.3f} {row['server_cpu_ms_per_request']:>11.3f}"
        )
    print(
        f"ratio front door / tickets: p50 {result['ratio_p50']}, p99 {result['ratio_p99']}, "
        f"CPU {result['ratio_cpu']}; p50 added {result['added_p50_ms']} ms"
    )
    print(f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}")
    print(f"wrote {write_json('bench_front_door.json', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
