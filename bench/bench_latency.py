"""Latency of the cascade against each tier alone, with streamed replies paced like real models (issue 13).

The loopback server (``bench/loopback_server.py``, its own process) paces every reply: the
mini model sends its first token after 300 ms and one every 20 ms after; the flagship
after 800 ms and one every 40 ms. Tickets marked ``[needs-review]`` get a low option-code
confidence and escalate; the others are kept. The graph is tests/graphs/loopback_openai.yaml
(mini with log-probabilities and a 0.7 threshold, flagship with vision).

Measured side by side in one run, interleaved round by round, each ticket's wall time:

* ``cascade, escalated``: ``Pipeline.run`` of an escalated ticket (the early gate stops the
  mini's reply at its option-code token, then the flagship answers);
* ``cascade, escalated, early gate off``: the same with ``early: false`` (the mini's whole
  reply, then the flagship: the behaviour before the early gate);
* ``flagship alone``: one call of the flagship with the escalation request the cascade
  sends (same prompt, same reply);
* ``cascade, kept``: ``Pipeline.run`` of a kept ticket (the mini's whole reply, streamed);
* ``mini alone``: one call of the mini with the same triage request, not streamed;
* ``image``: tickets with a PNG attached; the server's request counts show whether the mini
  (no vision) was called.

Each series also reports this process's CPU milliseconds per ticket (the server runs in its
own process), which shows how much of a difference is triagegate's own work.

Targets: escalated p50 <= 1.15x flagship alone; kept p50 <= mini alone + 5 ms; 0 mini
requests for image tickets. Prints a table and writes ``bench/out/latency.json``.

    .venv/bin/python bench/bench_latency.py              # 24 tickets of each kind x 3 rounds, one at a time
    .venv/bin/python bench/bench_latency.py --answer-words 120   # answers of a realistic length
    .venv/bin/python bench/bench_latency.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from _procs import LOOPBACK, OUT, REPO, Child, machine

import triagegate
from triagegate.models.base import ChatRequest, chat_until
from triagegate.replies import escalate_request, triage_request
from triagegate.types import Attachment, Ticket, Triage

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.support.images import tiny_png

MINI = ("mini-model", 0.3, 0.02)
FLAGSHIP = ("flagship-model", 0.8, 0.04)
HARD = "[needs-review]"


def graph_file(tmp: Path, early: bool) -> Path:
    raw = yaml.safe_load(LOOPBACK.read_text(encoding="utf-8"))
    raw["prompts"] = str(REPO / "prompts")
    raw["gate"]["early"] = early
    for model in raw["models"].values():
        model["timeout"] = 30
    path = tmp / f"latency-early-{early}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def tickets(kind: str, n: int, round_: int) -> list[Ticket]:
    out = []
    for i in range(n):
        text = f"Order {round_}-{i}: my parcel has not arrived and the tracking page shows nothing."
        if kind == "escalated":
            out.append(Ticket(id=f"e{round_}-{i}", text=f"{HARD} {text}"))
        elif kind == "image":
            png = base64.b64encode(tiny_png()).decode()
            attachment = Attachment(url=f"data:image/png;base64,{png}")
            out.append(
                Ticket(
                    id=f"i{round_}-{i}", text=f"What does this screen mean? {text}", attachments=[attachment]
                )
            )
        else:
            out.append(Ticket(id=f"k{round_}-{i}", text=text))
    return out


CPU: dict[str, float] = {}
"""This process's CPU seconds per series (the server runs in its own process)."""


async def timed(
    key: str, items: list[Any], call: Callable[[Any], Awaitable[Any]], concurrency: int
) -> list[float]:
    """Wall seconds of ``call(item)`` for each item, ``concurrency`` at a time; adds the CPU used to :data:`CPU`."""
    out: list[float] = [0.0] * len(items)
    queue = iter(range(len(items)))

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            await call(items[i])
            out[i] = time.perf_counter() - started

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    CPU[key] = CPU.get(key, 0.0) + time.process_time() - cpu
    return out


def counts(base: str) -> dict[str, int]:
    models: dict[str, int] = httpx.get(base.removesuffix("/v1") + "/bench/counts").json()["models"]
    return models


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def measure(base: str, tmp: Path, n: int, rounds: int, concurrency: int) -> dict[str, Any]:
    env = {"TRIAGEGATE_MINI_BASE_URL": base, "TRIAGEGATE_FLAGSHIP_BASE_URL": base}
    series: dict[str, list[float]] = {
        k: []
        for k in (
            "escalated",
            "escalated_early_off",
            "flagship_alone",
            "kept",
            "mini_alone",
            "mini_alone_streamed",
            "image",
        )
    }
    routes: dict[str, set[str]] = {k: set() for k in ("escalated", "escalated_early_off", "kept", "image")}
    image_requests: dict[str, int] = {}
    stopped = 0
    async with (
        triagegate.load(graph_file(tmp, True), environ=env) as cascade,
        triagegate.load(graph_file(tmp, False), environ=env) as whole,
    ):
        spec = cascade.spec
        mini_tier, flagship_tier = spec.tiers
        mini, flagship = cascade.backends["mini"], cascade.backends["flagship"]

        def escalation(ticket: Ticket) -> ChatRequest:
            draft = Triage(
                category="shipping", priority="normal", confidence=0.3, confidence_method="logprobs"
            )
            return escalate_request(
                cascade.templates[flagship_tier.name], spec, ticket, draft, [], flagship_tier
            )

        def triage(ticket: Ticket) -> ChatRequest:
            return triage_request(
                cascade.templates[mini_tier.name], spec, ticket, [], mini.capabilities, mini_tier
            )

        async def run(pipeline: Any, key: str, ticket: Ticket) -> None:
            nonlocal stopped
            outcome = await pipeline.run(ticket)
            if outcome.status != "ok":
                raise RuntimeError(f"{key}: {outcome.errors}")
            routes[key].add(outcome.route)
            stopped += sum(1 for node in outcome.nodes if "usage_estimated:stopped_early" in node.warnings)

        for r in range(rounds):
            escalated, kept, images = (
                tickets("escalated", n, r),
                tickets("kept", n, r),
                tickets("image", n, r),
            )
            series["escalated"] += await timed(
                "escalated", escalated, lambda t: run(cascade, "escalated", t), concurrency
            )
            series["flagship_alone"] += await timed(
                "flagship_alone", escalated, lambda t: flagship.chat(escalation(t)), concurrency
            )
            series["escalated_early_off"] += await timed(
                "escalated_early_off", escalated, lambda t: run(whole, "escalated_early_off", t), concurrency
            )
            series["kept"] += await timed("kept", kept, lambda t: run(cascade, "kept", t), concurrency)
            series["mini_alone"] += await timed(
                "mini_alone", kept, lambda t: mini.chat(triage(t)), concurrency
            )
            series["mini_alone_streamed"] += await timed(
                "mini_alone_streamed",
                kept,
                lambda t: chat_until(mini, triage(t), lambda _partial: None),
                concurrency,
            )
            before = counts(base)
            series["image"] += await timed("image", images, lambda t: run(cascade, "image", t), concurrency)
            after = counts(base)
            for model in set(before) | set(after):
                image_requests[model] = (
                    image_requests.get(model, 0) + after.get(model, 0) - before.get(model, 0)
                )
    summary = {
        k: {"p50_ms": 1000 * p50(v), "p95_ms": 1000 * p95(v), "n": len(v), "cpu_ms": 1000 * CPU[k] / len(v)}
        for k, v in series.items()
    }
    return {
        "summary": summary,
        "routes": {k: sorted(v) for k, v in routes.items()},
        "image_requests": image_requests,
        "early_stops": stopped,
        "ratios": {
            "escalated_over_flagship_alone": p50(series["escalated"]) / p50(series["flagship_alone"]),
            "escalated_early_off_over_flagship_alone": p50(series["escalated_early_off"])
            / p50(series["flagship_alone"]),
            "kept_minus_mini_alone_ms": 1000 * (p50(series["kept"]) - p50(series["mini_alone"])),
            "kept_minus_mini_alone_streamed_ms": 1000
            * (p50(series["kept"]) - p50(series["mini_alone_streamed"])),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tickets", type=int, default=24, help="tickets of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="tickets in flight at once")
    parser.add_argument("--quick", action="store_true", help="8 tickets x 1 round")
    parser.add_argument(
        "--answer-words",
        type=int,
        default=0,
        help="words in each reply's answer (0: the server's two-word default)",
    )
    args = parser.parse_args(argv)
    n, rounds = (8, 1) if args.quick else (args.tickets, args.rounds)
    pacing = []
    for model, ttft, per_token in (MINI, FLAGSHIP):
        pacing += ["--ttft", f"{model}={ttft}", "--per-token", f"{model}={per_token}"]
    words = ["--answer-words", str(args.answer_words)]
    server = Child(
        [sys.executable, str(REPO / "bench" / "loopback_server.py"), "--port", "0", *pacing, *words]
    )
    tmp = OUT / "latency-graphs"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(measure(server.ready, tmp, n, rounds, args.concurrency))
    finally:
        server.terminate()
        for path in tmp.glob("*.yaml"):
            path.unlink()
        tmp.rmdir()
    result["config"] = {
        "tickets_per_kind_per_round": n,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "mini": {"model": MINI[0], "ttft_s": MINI[1], "per_token_s": MINI[2]},
        "flagship": {"model": FLAGSHIP[0], "ttft_s": FLAGSHIP[1], "per_token_s": FLAGSHIP[2]},
        "graph": str(LOOPBACK.relative_to(REPO)),
        "answer_words": args.answer_words,
    }
    result["machine"] = machine()
    s, ratios = result["summary"], result["ratios"]
    print(f"{'':40} {'p50 ms':>9} {'p95 ms':>9} {'n':>5} {'CPU ms':>8}")
    labels = {
        "escalated": "cascade, escalated (early gate)",
        "escalated_early_off": "cascade, escalated, early gate off",
        "flagship_alone": "flagship alone",
        "kept": "cascade, kept",
        "mini_alone": "mini alone",
        "mini_alone_streamed": "mini alone, streamed",
        "image": "cascade, image ticket",
    }
    for key, label in labels.items():
        row = s[key]
        print(f"{label:40} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} {row['n']:5d} {row['cpu_ms']:8.2f}")
    esc = ratios["escalated_over_flagship_alone"]
    print(
        f"escalated / flagship alone (p50): {esc:.3f}x (target <= 1.15x: {'met' if esc <= 1.15 else 'MISSED'})"
    )
    print(f"early gate off / flagship alone (p50): {ratios['escalated_early_off_over_flagship_alone']:.3f}x")
    kept = ratios["kept_minus_mini_alone_ms"]
    print(f"kept - mini alone (p50): {kept:+.1f} ms (target <= +5 ms: {'met' if kept <= 5 else 'MISSED'})")
    print(f"kept - mini alone streamed (p50): {ratios['kept_minus_mini_alone_streamed_ms']:+.1f} ms")
    mini_image = result["image_requests"].get(MINI[0], 0)
    print(
        f"requests to the mini for image tickets: {mini_image} (target 0: {'met' if mini_image == 0 else 'MISSED'})"
    )
    print(f"routes: {result['routes']}; replies stopped early: {result['early_stops']}")
    OUT.mkdir(parents=True, exist_ok=True)
    name = "latency.json" if not args.answer_words else f"latency-{args.answer_words}-words.json"
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
