"""Several endpoints per alias: spread, client-visible errors and time to move off a failing endpoint.

Three loopback model servers, each its own process (tests/support/openai_server.py, no
latency), behind one alias with ``endpoints`` weighted 1:2:3, driven through the OpenAI
backend from this process at concurrency 16. Three runs of ``--requests`` (2,000) each:

* **throughput**: unpaced, healthy; the same requests through a plain one-``base_url`` alias
  (the baseline), through ``endpoints`` listing that one server (the balancer's own cost) and
  through the three endpoints, in alternating blocks, as ratios of p50 latency and of
  throughput to the baseline measured in the same run;
* **5xx**: paced at ``--rate`` requests/s; the weight-3 endpoint answers every request with
  500 from request 700 to 1400 (switched over HTTP), then heals;
* **refused**: the same, but the weight-3 endpoint's process is killed at 700 (connection
  refused) and started again on its port at 1400.

Per fault run: client-visible errors, extra attempts, the spread in each phase against the
weights, the requests the failing endpoint still received against its weight share, the time
from the fault to the last request it got before its breaker opened ("moved off"), and the
time from the heal to its first request again ("back"). Writes ``bench/out/bench_balancing.json``.

    .venv/bin/python bench/bench_balancing.py [--requests 2000] [--rate 400] [--cooldown 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from bench._procs import machine, percentile, write_json
from tests.support.balancing import Done, ServerProcess, between, run_paced, shares

from triagegate.models import BuildContext, ModelBackend, build_backend
from triagegate.spec import parse_spec

WEIGHTS = (1, 2, 3)
CONCURRENCY = 16
FAST = {"retry_base": 0.01, "retry_cap": 0.05}


def backend_for(binding: dict[str, Any], cache: Path) -> ModelBackend:
    text = yaml.safe_dump(
        {
            "models": {
                "mini": {"backend": "openai", "model": "gpt-mini", "timeout": 10, "options": FAST, **binding}
            },
            "taxonomy": {"categories": [{"name": "billing"}, {"name": "technical"}]},
            "nodes": {n: {"model": "mini", "prompt": n} for n in ("triage", "answer", "escalate")},
        }
    )
    loaded = parse_spec(text, environ={})
    return build_backend(
        "mini", loaded.spec.models["mini"], BuildContext(loaded=loaded, environ={}, cache_dir=cache)
    )


def balanced(servers: list[ServerProcess], cooldown: float, cache: Path) -> ModelBackend:
    endpoints = [{"base_url": s.base_url, "weight": w} for s, w in zip(servers, WEIGHTS, strict=True)]
    return backend_for(
        {"endpoints": endpoints, "cooldown_s": cooldown, "cooldown_after": 3, "max_retries": 2}, cache
    )


def latency_ms(done: list[Done]) -> list[float]:
    return [(d.finished - d.sent) * 1000 for d in done]


def deviation(names: list[str | None], endpoints: list[str], weights: tuple[int, ...]) -> float:
    """The largest gap between an endpoint's share of ``names`` and its share of ``weights``."""
    got = shares(names, endpoints)
    return max(abs(g - w / sum(weights)) for g, w in zip(got, weights, strict=True))


async def throughput(servers: list[ServerProcess], count: int, blocks: int, cache: Path) -> dict[str, Any]:
    backends = {
        "one base_url": backend_for({"base_url": servers[0].base_url, "max_retries": 2}, cache),
        "1 endpoint": backend_for(
            {"endpoints": [{"base_url": servers[0].base_url}], "max_retries": 2}, cache
        ),
        "3 endpoints": balanced(servers, 30.0, cache),
    }
    runs: dict[str, list[Done]] = {label: [] for label in backends}
    seconds = dict.fromkeys(backends, 0.0)
    order = list(backends.items())
    try:
        for backend in backends.values():  # warm-up: connections, limiters
            await run_paced(backend, 200, rate=1e9, concurrency=CONCURRENCY)
        for _ in range(blocks):
            order.reverse()
            for label, backend in order:
                started = time.perf_counter()
                runs[label] += await run_paced(backend, count // blocks, rate=1e9, concurrency=CONCURRENCY)
                seconds[label] += time.perf_counter() - started
    finally:
        for backend in backends.values():
            await backend.aclose()
    out: dict[str, Any] = {}
    for label, done in runs.items():
        values = latency_ms(done)
        out[label] = {
            "requests": len(done),
            "errors": sum(1 for d in done if d.error),
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(percentile(values, 99), 3),
            "requests_per_s": round(len(done) / seconds[label], 1),
        }
    base = out["one base_url"]
    for label in ("1 endpoint", "3 endpoints"):
        out[f"ratio_p50 {label}"] = round(out[label]["p50_ms"] / base["p50_ms"], 3)
        out[f"ratio_throughput {label}"] = round(out[label]["requests_per_s"] / base["requests_per_s"], 3)
    return out


async def fault_run(
    servers: list[ServerProcess], kind: str, args: argparse.Namespace, cache: Path
) -> dict[str, Any]:
    fail_at, heal_at = args.requests * 7 // 20, args.requests * 14 // 20
    backend = balanced(servers, args.cooldown, cache)
    names = [e.name for e in backend.endpoints]  # type: ignore[attr-defined]
    marks: dict[str, float] = {}
    port = servers[2].base_url.rsplit(":", 1)[1].split("/")[0]

    def fail() -> None:
        if kind == "5xx":
            servers[2].faults(fault_rate=1.0, faults=["500"])
        else:
            servers[2].stop()
        marks["fail"] = time.time()

    def heal() -> None:
        if kind == "5xx":
            servers[2].faults(fault_rate=0.0)
        else:
            servers[2] = ServerProcess("--port", port)
        marks["heal"] = time.time()

    try:
        done = await run_paced(
            backend,
            args.requests,
            rate=args.rate,
            concurrency=CONCURRENCY,
            hooks={fail_at: fail, heal_at: heal},
        )
    finally:
        await backend.aclose()
    phases = {"before": done[:fail_at], "failing": done[fail_at:heal_at], "after": done[heal_at:]}
    share = WEIGHTS[2] / sum(WEIGHTS)
    result: dict[str, Any] = {
        "requests": len(done),
        "client_errors": sum(1 for d in done if d.error),
        "extra_attempts": sum(d.requests for d in done) - len(done),
        "spread_before": [round(s, 3) for s in shares([d.endpoint for d in phases["before"]], names)],
        "max_deviation_before": round(deviation([d.endpoint for d in phases["before"]], names, WEIGHTS), 3),
        "max_deviation_failing_others": round(
            deviation([d.endpoint for d in phases["failing"]], names[:2], WEIGHTS[:2]), 3
        ),
        "answered_by_failing_while_failing": sum(1 for d in phases["failing"] if d.endpoint == names[2]),
        "expected_share_while_failing": round(share * len(phases["failing"])),
        "p50_ms_before": round(statistics.median(latency_ms(phases["before"])), 3),
        "p50_ms_failing": round(statistics.median(latency_ms(phases["failing"])), 3),
        "p99_ms_failing": round(percentile(latency_ms(phases["failing"]), 99), 3),
        "failing_window_s": round(marks["heal"] - marks["fail"], 3),
    }
    result["ratio_p50_failing"] = round(result["p50_ms_failing"] / result["p50_ms_before"], 3)
    second_half = phases["after"][len(phases["after"]) // 2 :]
    result["max_deviation_after_second_half"] = round(
        deviation([d.endpoint for d in second_half], names, WEIGHTS), 3
    )
    if kind == "5xx":
        arrivals = servers[2].stats()["arrivals"]
        burst = between(arrivals, marks["fail"], marks["fail"] + args.cooldown)
        result["received_while_failing"] = len(between(arrivals, marks["fail"], marks["heal"]))
        result["burst_after_fault"] = len(burst)
        result["moved_off_after_s"] = round(max(burst) - marks["fail"], 4) if burst else 0.0
        back = [t for t in arrivals if t >= marks["heal"]]
    else:
        # No server to count at: the balancer's failed attempts show where it still tried.
        retried = [
            d.sent for d in phases["failing"] if d.requests > 1 and d.sent < marks["fail"] + args.cooldown
        ]
        result["moved_off_after_s"] = round(max(retried) - marks["fail"], 4) if retried else 0.0
        back = [d.sent for d in phases["after"] if d.endpoint == names[2]]
    result["back_after_s"] = round(min(back) - marks["heal"], 4) if back else None
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    servers = [ServerProcess() for _ in WEIGHTS]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp)
            return {
                "throughput": await throughput(servers, args.requests, args.blocks, cache),
                "5xx": await fault_run(servers, "5xx", args, cache),
                "refused": await fault_run(servers, "refused", args, cache),
            }
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=400.0, help="requests/s at most in the fault runs")
    parser.add_argument("--cooldown", type=float, default=0.5, help="cooldown_s of the balanced alias")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks in the throughput run")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = asyncio.run(run(args))
    payload = {
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "weights": WEIGHTS,
        "concurrency": CONCURRENCY,
        "args": vars(args),
        **results,
    }
    for section in ("throughput", "5xx", "refused"):
        print(f"== {section}")
        for key, value in results[section].items():
            print(f"  {key}: {value}")
    print(f"wrote {write_json('bench_balancing.json', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
