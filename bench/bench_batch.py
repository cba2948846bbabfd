"""Batch benchmarks: throughput against the ideal, peak memory against input size, resume overhead.

Every batch is the real ``triagegate batch`` CLI in its own process, against the loopback
OpenAI-compatible server in another process (tests/graphs/openai_batch.yaml, one mini
request per ticket, no escalations):

1. Throughput at concurrency 64: first with a zero-latency server (the pipeline's own
   ceiling on this machine), then with 200 ms of simulated model latency. The ideal is
   min(concurrency / latency, zero-latency throughput); the target is >= 85% of it.
   Throughput is the run's own figure (outcomes / run time, process start-up excluded).
2. Peak RSS (``wait4`` of each batch process) for a 10,000- and a 200,000-ticket input
   with ``--dry-run`` (reading, validation, id and duplicate tracking, estimates), and for
   real runs of 10,000 and the 100,000 of step 3 against the zero-latency server.
   Target: growth from 10,000 to 200,000 tickets <= 50 MB.
3. Resume: a finished 100,000-ticket batch re-run with the same command; the target is
   under 10% of the original wall time (both include process start-up).

    .venv/bin/python bench/bench_batch.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procs import REPO, machine, openai_server, write_json

GRAPH = REPO / "tests" / "graphs" / "openai_batch.yaml"
CONCURRENCY = 64
LATENCY = 0.2


def make_input(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(
                json.dumps({"id": f"b{i}", "text": f"Ticket {i}: I was charged twice for order {i}."}) + "\n"
            )
    return path


def run_batch(source: Path, output: Path, base_url: str | None, *extra: str) -> dict[str, Any]:
    """Run the batch CLI; returns wall seconds, peak RSS in MB, the exit code and its JSON report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGEGATE_")}
    if base_url:
        env.update(TRIAGEGATE_MINI_BASE_URL=base_url, TRIAGEGATE_FLAGSHIP_BASE_URL=base_url)
    report = output.with_name(output.name + ".report.json")
    args = [
        str(Path(sys.executable).with_name("triagegate")),
        "batch",
        str(GRAPH),
        str(source),
        "-o",
        str(output),
        "--report",
        str(report),
        "--progress-interval",
        "3600",
        *extra,
    ]
    started = time.monotonic()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read() if process.stderr else ""
    if code != 0:
        raise RuntimeError(f"batch exited {code}: {' '.join(args)}\n{stderr[-2000:]}")
    return {
        "command": " ".join(args),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "report": json.loads(report.read_text()),
    }


def throughput(work: Path, tickets: int) -> dict[str, Any]:
    source = make_input(work / "tp.jsonl", tickets)
    results: dict[str, Any] = {}
    for name, latency in (("zero_latency", 0.0), ("latency_200ms", LATENCY)):
        server = openai_server(latency)
        try:
            run = run_batch(
                source, work / f"tp-{name}.jsonl", server.ready, "--concurrency", str(CONCURRENCY)
            )
        finally:
            server.terminate()
        results[name] = {
            "tickets": tickets,
            "throughput_per_s": run["report"]["run"]["throughput_per_s"],
            "p50_latency_ms": run["report"]["run"]["latency_ms"]["p50"],
            "command": run["command"],
        }
    zero = results["zero_latency"]["throughput_per_s"]
    ideal = min(CONCURRENCY / LATENCY, zero)
    achieved = results["latency_200ms"]["throughput_per_s"]
    results["ideal_per_s"] = round(ideal, 2)
    results["fraction_of_ideal"] = round(achieved / ideal, 4)
    results["target"] = ">= 0.85"
    results["met"] = achieved / ideal >= 0.85
    return results


def memory_and_resume(work: Path, small: int, large: int, resume_size: int) -> dict[str, Any]:
    small_in = make_input(work / "small.jsonl", small)
    large_in = make_input(work / "large.jsonl", large)
    dry_small = run_batch(small_in, work / "dry-small.jsonl", None, "--dry-run")
    dry_large = run_batch(large_in, work / "dry-large.jsonl", None, "--dry-run")
    resume_in = make_input(work / "resume.jsonl", resume_size)
    server = openai_server(0.0)
    try:
        real_small = run_batch(
            small_in, work / "real-small.jsonl", server.ready, "--concurrency", str(CONCURRENCY)
        )
        first = run_batch(
            resume_in, work / "resume-out.jsonl", server.ready, "--concurrency", str(CONCURRENCY)
        )
        again = run_batch(
            resume_in, work / "resume-out.jsonl", server.ready, "--concurrency", str(CONCURRENCY)
        )
    finally:
        server.terminate()
    assert again["report"]["run"]["written"] == 0
    assert again["report"]["run"]["already_done"] == resume_size
    dry_growth = dry_large["peak_rss_mb"] - dry_small["peak_rss_mb"]
    real_growth = first["peak_rss_mb"] - real_small["peak_rss_mb"]
    ratio = again["wall_s"] / first["wall_s"]
    return {
        "memory": {
            "dry_run": {
                f"{small}": dry_small["peak_rss_mb"],
                f"{large}": dry_large["peak_rss_mb"],
                "growth_mb": round(dry_growth, 1),
                "commands": [dry_small["command"], dry_large["command"]],
            },
            "real_run": {
                f"{small}": real_small["peak_rss_mb"],
                f"{resume_size}": first["peak_rss_mb"],
                "growth_mb": round(real_growth, 1),
                "commands": [real_small["command"], first["command"]],
            },
            "target": f"growth {small} -> {large} tickets <= 50 MB",
            "met": dry_growth <= 50,
        },
        "resume": {
            "tickets": resume_size,
            "first_run_wall_s": first["wall_s"],
            "first_run_throughput_per_s": first["report"]["run"]["throughput_per_s"],
            "rerun_wall_s": again["wall_s"],
            "fraction": round(ratio, 4),
            "target": "< 0.10",
            "met": ratio < 0.10,
            "command": first["command"],
        },
    }


class _ShardedPool(httpx.AsyncBaseTransport):
    """Diagnosis only: spread requests over several small connection pools (least loaded first).

    httpcore's pool rescans every connection for every queued request on each change, so
    its cost per request grows with the requests in flight; small pools keep that scan short.
    """

    def __init__(self, shards: int, size: int) -> None:
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pools = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._load = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._load.__getitem__)
        self._load[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
            await response.aread()
            return response
        finally:
            self._load[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def pool_diagnosis(tickets: int) -> dict[str, Any]:
    """CPU per ticket of ``run_many`` in this process, default client vs sharded pools, at 0 and 200 ms."""
    import asyncio

    import triagegate

    async def measure(base_url: str, sharded: bool) -> dict[str, float]:
        env = {**os.environ, "TRIAGEGATE_MINI_BASE_URL": base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": base_url}
        extras = {"httpx_transport": _ShardedPool(8, CONCURRENCY // 8)} if sharded else None
        pipeline = triagegate.load(GRAPH, environ=env, extras=extras)
        items = (
            {"id": f"d{i}", "text": f"Ticket {i}: I was charged twice for order {i}."} for i in range(tickets)
        )
        cpu, wall = time.process_time(), time.perf_counter()
        async with pipeline:
            async for _ in pipeline.run_many(items, concurrency=CONCURRENCY):
                pass
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "throughput_per_s": round(tickets / wall, 1),
            "cpu_ms_per_ticket": round(cpu / tickets * 1000, 2),
        }

    out: dict[str, Any] = {}
    for latency in (0.0, LATENCY):
        server = openai_server(latency)
        try:
            for sharded in (False, True):
                key = f"{'sharded_8x8' if sharded else 'default_pool'}@{int(latency * 1000)}ms"
                out[key] = asyncio.run(measure(server.ready, sharded))
        finally:
            server.terminate()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--throughput-only", action="store_true", help="only the throughput comparison")
    parser.add_argument(
        "--pool-diagnosis",
        action="store_true",
        help="only compare CPU per ticket with the default HTTP pool and with sharded pools",
    )
    args = parser.parse_args(argv)
    if args.pool_diagnosis:
        found = pool_diagnosis(1_000 if args.quick else 3_000)
        path = write_json(
            "batch_pool_diagnosis.json", {"machine": machine(), "loadavg": os.getloadavg(), **found}
        )
        for key, value in found.items():
            print(
                f"{key:<22} {value['throughput_per_s']:>8.1f}/s  {value['cpu_ms_per_ticket']:>6.2f} ms CPU per ticket"
            )
        print(f"JSON: {path}")
        return 0
    tp_tickets, small, large, resume_size = (
        (1_000, 2_000, 20_000, 5_000) if args.quick else (5_000, 10_000, 200_000, 100_000)
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        tp = throughput(work, tp_tickets)
        if args.throughput_only:
            path = write_json(
                "batch_throughput.json",
                {"machine": {**machine(), "loadavg_before": load_before}, "throughput": tp},
            )
            print(
                f"zero latency {tp['zero_latency']['throughput_per_s']:.1f}/s, 200 ms "
                f"{tp['latency_200ms']['throughput_per_s']:.1f}/s: {tp['fraction_of_ideal']:.1%} of ideal "
                f"{tp['ideal_per_s']:.1f}/s ({ok(tp['met'])}); load {load_before[0]:.2f} before, "
                f"{os.getloadavg()[0]:.2f} after; JSON: {path}"
            )
            return 0
        mem = memory_and_resume(work, small, large, resume_size)
    result = {
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "quick": args.quick,
        "throughput": tp,
        **mem,
    }
    path = write_json("batch.json", result)
    rows = [
        ("zero-latency throughput (c=64)", f"{tp['zero_latency']['throughput_per_s']:.1f}/s", ""),
        ("200 ms latency throughput (c=64)", f"{tp['latency_200ms']['throughput_per_s']:.1f}/s", ""),
        ("  fraction of ideal", f"{tp['fraction_of_ideal']:.1%} of {tp['ideal_per_s']:.1f}/s", ok(tp["met"])),
        (
            f"peak RSS dry run {small} -> {large}",
            f"{mem['memory']['dry_run'][str(small)]} -> "
            f"{mem['memory']['dry_run'][str(large)]} MB (+{mem['memory']['dry_run']['growth_mb']})",
            ok(mem["memory"]["met"]),
        ),
        (
            f"peak RSS real run {small} -> {resume_size}",
            f"{mem['memory']['real_run'][str(small)]} -> "
            f"{mem['memory']['real_run'][str(resume_size)]} MB (+{mem['memory']['real_run']['growth_mb']})",
            "",
        ),
        (f"first run {resume_size} tickets", f"{mem['resume']['first_run_wall_s']:.1f} s", ""),
        (
            "re-run of the finished batch",
            f"{mem['resume']['rerun_wall_s']:.1f} s ({mem['resume']['fraction']:.1%})",
            ok(mem["resume"]["met"]),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, verdict in rows:
        print(f"{name:<{width}}  {value:<40} {verdict}")
    print(
        f"load average {load_before[0]:.2f} before, {result['machine']['loadavg_after'][0]:.2f} after; JSON: {path}"
    )
    return 0


def ok(met: bool) -> str:
    return "target met" if met else "TARGET MISSED"


if __name__ == "__main__":
    sys.exit(main())
