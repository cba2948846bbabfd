"""Overhead of triagegate against what users would write instead (issue 7).

One process runs the same tickets (half kept by the mini tier: one model call; half
escalated: two calls) against the loopback OpenAI-compatible server, started as a
separate process with zero latency, through three cascades side by side: ``floor``
(asyncio + httpx replaying triagegate's exact request bodies), ``peer`` (LangGraph +
langchain-openai ``ChatOpenAI`` with structured output) and ``triagegate``
(``Pipeline.run``, logging JSON at INFO to a file as in production). See
``overhead_impls.py``.

Measured, in the same run so that ratios are not skewed by the machine's load:

* CPU (``time.process_time``) and wall time per ticket at concurrency 1, median and p95
  over all tickets of all rounds, and the mean per round (total CPU / tickets);
* tickets/s at concurrency 1 and at ``--concurrency`` (64), per round;
* LangGraph's own cost: an empty 4-node graph, and triagegate's graph shape and state
  with stub nodes;
* start-up: ``import triagegate``, ``triagegate --help`` and ``triagegate run`` from
  process start to the first model request reaching the server.

Prints a table and writes ``bench/out/overhead.json``. ``--profile`` instead profiles one
implementation with pyinstrument and prints where its time goes.

    .venv/bin/python bench/bench_overhead.py                 # 2000 tickets x 5 rounds
    .venv/bin/python bench/bench_overhead.py --quick         # smoke run
    .venv/bin/python bench/bench_overhead.py --profile triagegate
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
from overhead_impls import (
    GRAPH,
    ROOT,
    Floor,
    NodesOnly,
    Peer,
    Triagegate,
    capture_bodies,
    environ_for,
    expected_route,
    make_tickets,
)

OUT_DIR = ROOT / "bench" / "out"
SERVER = ROOT / "bench" / "loopback_server.py"
TARGETS = {"cpu_vs_peer": 0.5, "cpu_vs_floor": 2.0, "help_ms": 300.0, "import_ms": 500.0}


class Impl(Protocol):
    async def run(self, i: int) -> str: ...

    async def aclose(self) -> None: ...


@contextmanager
def loopback_server() -> Iterator[str]:
    """Start ``bench/loopback_server.py`` as a separate process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def sequential(impl: Impl, n: int) -> dict[str, Any]:
    """Concurrency 1: per-ticket CPU and wall, plus totals."""
    gc.collect()
    cpus, walls = [], []
    clock, cpu = time.perf_counter, time.process_time
    c_start, w_start = cpu(), clock()
    for i in range(n):
        c0, w0 = cpu(), clock()
        route = await impl.run(i)
        cpus.append(cpu() - c0)
        walls.append(clock() - w0)
        if route != expected_route(i):
            raise AssertionError(
                f"{type(impl).__name__}: ticket {i} went {route}, expected {expected_route(i)}"
            )
    return {"cpu": cpus, "wall": walls, "cpu_total": cpu() - c_start, "wall_total": clock() - w_start}


async def concurrent(impl: Impl, n: int, concurrency: int) -> dict[str, Any]:
    """``concurrency`` workers pulling tickets until all ``n`` are done."""
    gc.collect()
    todo = iter(range(n))
    wrong: list[int] = []

    async def worker() -> None:
        for i in todo:
            if await impl.run(i) != expected_route(i):
                wrong.append(i)

    c_start, w_start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - c_start, time.perf_counter() - w_start
    if wrong:
        raise AssertionError(f"{type(impl).__name__}: wrong route for tickets {wrong[:5]}")
    return {"cpu_total": cpu, "wall_total": wall}


async def empty_graph_runs(n: int, rounds: int, pipeline: Any) -> dict[str, list[float]]:
    """CPU per ``ainvoke`` of LangGraph graphs whose nodes do nothing.

    ``empty_4_nodes``: four no-op async nodes in a line over a four-key state.
    ``triagegate_shape``: ``triagegate.graph.build_graph()`` itself (topology, routers,
    reducers, run context) with its tier nodes swapped for stubs that return updates of the
    same shape and call nothing: what LangGraph itself costs triagegate per mini-tier ticket.
    """
    from typing import TypedDict
    from unittest import mock

    from langgraph.graph import END, START, StateGraph

    from triagegate import graph as tg_graph
    from triagegate import nodes as tg_nodes
    from triagegate.state import Reply, Visit
    from triagegate.types import GateDecision

    class Small(TypedDict, total=False):
        a: int
        b: int
        c: int
        d: int

    def node(key: str) -> Callable[[Any], Awaitable[dict[str, Any]]]:
        async def step(state: Any) -> dict[str, Any]:
            return {key: 1}

        return step

    small = StateGraph(Small)
    for key in "abcd":
        small.add_node(key, node(key))
    small.add_edge(START, "a")
    small.add_edge("a", "b")
    small.add_edge("b", "c")
    small.add_edge("c", "d")
    small.add_edge("d", END)
    empty = small.compile()

    def stub(tier: Any, *, last: bool) -> Callable[..., Awaitable[dict[str, Any]]]:
        reply = Reply("answer", "billing", "normal", route=tier.name)
        keep = GateDecision(tier=tier.name, route="keep", confidence=0.95, threshold=0.7)
        update: dict[str, Any] = {"reply": reply, "runs": []}
        if not last:
            update["visits"] = [Visit(tier.name, None, keep)]

        async def step(state: Any, runtime: Any) -> dict[str, Any]:
            return dict(update)

        return step

    capabilities = {alias: b.capabilities for alias, b in pipeline.backends.items()}
    with mock.patch.object(tg_nodes, "tier_node", stub):
        stubbed = tg_graph.build_graph(pipeline.spec, capabilities)
    ticket = make_tickets(1)[0]
    context = pipeline._run_context

    out: dict[str, list[float]] = {"empty_4_nodes": [], "triagegate_shape": []}
    for _ in range(rounds):
        for name, call in (
            ("empty_4_nodes", lambda: empty.ainvoke({"a": 0})),
            (
                "triagegate_shape",
                lambda: stubbed.ainvoke(
                    {"run_id": "x", "ticket": ticket, "images": [], "flags": []}, context=context
                ),
            ),
        ):
            gc.collect()
            c0 = time.process_time()
            for _ in range(n):
                await call()
            out[name].append((time.process_time() - c0) / n)
    return out


async def measure(base_url: str, args: argparse.Namespace, log_path: Path) -> dict[str, Any]:
    from triagegate import log as tg_log

    log_file = log_path.open("w", encoding="utf-8")
    tg_log.configure(level="INFO", json=True, stream=log_file)
    tickets = make_tickets(args.tickets)
    n = len(tickets)
    bodies = await capture_bodies(base_url, tickets)
    tg = Triagegate(base_url, tickets)
    codes = [chr(ord("A") + k) for k in range(len(tg.pipeline.spec.taxonomy.category_names))]
    impls: dict[str, Impl] = {
        "floor": Floor(bodies, codes),
        "peer": Peer(base_url, tickets),
        "triagegate": tg,
        "tg-no-langgraph": NodesOnly(tg),
    }
    warm = min(n, 200)
    for impl in impls.values():
        await sequential(impl, warm)
        await concurrent(impl, warm, args.concurrency)

    seq: dict[str, list[dict[str, Any]]] = {k: [] for k in impls}
    par: dict[str, list[dict[str, Any]]] = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seq[name].append(await sequential(impls[name], n))
        for name in order:
            par[name].append(await concurrent(impls[name], n, args.concurrency))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    graphs = await empty_graph_runs(n, args.rounds, tg.pipeline)
    for impl in impls.values():
        await impl.aclose()
    log_file.close()

    result: dict[str, Any] = {"impls": {}}
    for name in impls:
        cpus = [c for rnd in seq[name] for c in rnd["cpu"]]
        walls = [w for rnd in seq[name] for w in rnd["wall"]]
        result["impls"][name] = {
            "cpu_ms_median": statistics.median(cpus) * 1e3,
            "cpu_ms_p95": pct(cpus, 0.95) * 1e3,
            "cpu_ms_mean_by_round": [rnd["cpu_total"] / n * 1e3 for rnd in seq[name]],
            "cpu_ms_mini_median": statistics.median(c for rnd in seq[name] for c in rnd["cpu"][0::2]) * 1e3,
            "cpu_ms_flagship_median": statistics.median(c for rnd in seq[name] for c in rnd["cpu"][1::2])
            * 1e3,
            "wall_ms_median": statistics.median(walls) * 1e3,
            "wall_ms_p95": pct(walls, 0.95) * 1e3,
            "tps_c1_by_round": [n / rnd["wall_total"] for rnd in seq[name]],
            f"tps_c{args.concurrency}_by_round": [n / rnd["wall_total"] for rnd in par[name]],
            f"cpu_ms_c{args.concurrency}_by_round": [rnd["cpu_total"] / n * 1e3 for rnd in par[name]],
        }
    means = {k: v["cpu_ms_mean_by_round"] for k, v in result["impls"].items()}
    result["ratios"] = {
        "cpu_mean_vs_floor_by_round": [
            t / f for t, f in zip(means["triagegate"], means["floor"], strict=True)
        ],
        "cpu_mean_vs_peer_by_round": [t / p for t, p in zip(means["triagegate"], means["peer"], strict=True)],
        "cpu_median_vs_floor": result["impls"]["triagegate"]["cpu_ms_median"]
        / result["impls"]["floor"]["cpu_ms_median"],
        "cpu_median_vs_peer": result["impls"]["triagegate"]["cpu_ms_median"]
        / result["impls"]["peer"]["cpu_ms_median"],
    }
    result["langgraph_cpu_ms_by_round"] = {k: [v * 1e3 for v in vs] for k, vs in graphs.items()}
    return result


def _wall(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


_HEAVY_FOR_HELP = (
    "import sys, triagegate.cli; "
    "print(*[m for m in ('numpy', 'sklearn', 'langgraph', 'httpx', 'pydantic', 'yaml', 'rich') if m in sys.modules])"
)
"""What ``triagegate --help`` pays for before printing anything: none of these is needed for help."""


def startup(base_url: str, runs: int) -> dict[str, Any]:
    """Median wall times in ms of fresh processes (each kind interleaved with the others)."""
    py = sys.executable
    cli = str(Path(py).with_name("triagegate"))
    env = environ_for(base_url)
    control = base_url.removesuffix("/v1")
    bare, imported, helped, first, whole, importtime = [], [], [], [], [], []
    ticket = "I was charged twice this month"
    for _ in range(runs):
        bare.append(_wall([py, "-c", "pass"]))
        imported.append(_wall([py, "-c", "import triagegate"]))
        helped.append(_wall([cli, "--help"]))
        report = subprocess.run(
            [py, "-X", "importtime", "-c", "import triagegate"], capture_output=True, text=True, check=True
        )
        last = [ln for ln in report.stderr.splitlines() if ln.rstrip().endswith("| triagegate")][-1]
        importtime.append(int(last.split("|")[1]) / 1e6)
        httpx.post(f"{control}/bench/arm").raise_for_status()
        started = time.time()
        whole.append(_wall([cli, "run", str(GRAPH), ticket, "--json"], env=env))
        arrived = httpx.get(f"{control}/bench/first").json()["first"]
        first.append(arrived - started)
    ms = {
        k: statistics.median(v) * 1e3
        for k, v in {
            "bare_python": bare,
            "python_import_triagegate": imported,
            "help": helped,
            "run_to_first_request": first,
            "run_whole": whole,
            "importtime_triagegate": importtime,
        }.items()
    }
    ms["import_minus_bare"] = ms["python_import_triagegate"] - ms["bare_python"]
    heavy = subprocess.run(
        [py, "-c", _HEAVY_FOR_HELP], capture_output=True, text=True, check=True
    ).stdout.split()
    ms["help_minus_bare"] = ms["help"] - ms["bare_python"]
    return {"runs": runs, "ms": ms, "heavy_modules_loaded_by_cli_import": heavy}


_GROUPS = [
    ("waiting (selector idle)", re.compile(r"/selectors\.py$")),
    ("langgraph", re.compile(r"/langgraph/")),
    ("langchain_core", re.compile(r"/langchain_core/")),
    ("langchain_openai + openai", re.compile(r"/(langchain_openai|openai)/")),
    ("httpx/httpcore/h11/anyio", re.compile(r"/(httpx|httpcore|h11|anyio|sniffio)/")),
    ("pydantic", re.compile(r"/pydantic(_core)?/")),
    ("structlog", re.compile(r"/structlog/")),
    ("triagegate", re.compile(r"/triagegate/")),
    ("asyncio", re.compile(r"/asyncio/")),
    ("json", re.compile(r"/json/")),
    ("bench harness", re.compile(r"/bench/")),
]


def profile(base_url: str, target: str, n: int) -> None:
    """Profile ``target`` over ``n`` sequential tickets; print self time by package and top frames."""
    from pyinstrument import Profiler

    from triagegate import log as tg_log

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    log_file = (OUT_DIR / "overhead-profile.log").open("w", encoding="utf-8")
    tg_log.configure(level="INFO", json=True, stream=log_file)
    tickets = make_tickets(n)

    async def go() -> Any:
        if target == "floor":
            tg = Triagegate(base_url, tickets)
            codes = [chr(ord("A") + k) for k in range(len(tg.pipeline.spec.taxonomy.category_names))]
            impl: Impl = Floor(await capture_bodies(base_url, tickets), codes)
            await tg.aclose()
        elif target == "peer":
            impl = Peer(base_url, tickets)
        else:
            impl = Triagegate(base_url, tickets)
        await sequential(impl, min(n, 200))
        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        await sequential(impl, n)
        profiler.stop()
        await impl.aclose()
        return profiler

    profiler = asyncio.run(go())
    root = profiler.last_session.root_frame()
    by_group: dict[str, float] = {}
    by_function: dict[str, float] = {}
    by_other: dict[str, float] = {}

    def walk(frame: Any, inside: frozenset[str]) -> None:
        if frame.is_synthetic:
            return
        path = frame.file_path or ""
        if frame.function in ("epoll.poll", "poll.poll", "select.select"):
            group = "waiting (selector idle)"
        elif frame.function.startswith("socket."):
            group = "socket syscalls"
        else:
            group = next((g for g, rx in _GROUPS if rx.search(path)), "other")
        by_group[group] = by_group.get(group, 0.0) + frame.total_self_time
        if group == "other":
            leaf = f"{frame.function} ({frame.file_path_short})"
            by_other[leaf] = by_other.get(leaf, 0.0) + frame.total_self_time
        key = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        if group == "triagegate" and key not in inside:
            by_function[key] = by_function.get(key, 0.0) + frame.time
            inside = inside | {key}
        for child in frame.children:
            walk(child, inside)

    walk(root, frozenset())
    total = root.time
    busy = total - by_group.get("waiting (selector idle)", 0.0)
    print(
        f"pyinstrument, {target}, {n} tickets sequential: {total * 1e3 / n:.3f} ms/ticket wall, {busy * 1e3 / n:.3f} ms/ticket busy"
    )
    print("\nself time by package (ms per ticket, % of busy):")
    for group, secs in sorted(by_group.items(), key=lambda kv: -kv[1]):
        share = "" if group.startswith("waiting") else f"{100 * secs / busy:5.1f}%"
        print(f"  {group:28s} {secs * 1e3 / n:7.3f}  {share}")
    print("\nlargest self times under 'other' (ms per ticket):")
    for key, secs in sorted(by_other.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {secs * 1e3 / n:7.3f}  {key}")
    print("\ntriagegate functions, inclusive (ms per ticket):")
    for key, secs in sorted(by_function.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {secs * 1e3 / n:7.3f}  {key}")
    text_path = OUT_DIR / f"overhead-profile-{target}.txt"
    text_path.write_text(profiler.output_text(unicode=False, color=False, show_all=False), encoding="utf-8")
    print(f"\nfull tree: {text_path.relative_to(ROOT)}")


def _fmt_rounds(values: Sequence[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f}"


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    c = args.concurrency
    print(
        f"\nOverhead (issue 7): {args.tickets} tickets (half 1 call, half 2 calls) x {args.rounds} rounds, loopback server, zero latency"
    )
    print("CPU = time.process_time of the bench process; ms per ticket; *_round = median over rounds\n")
    head = f"{'impl':16s} {'cpu med':>8s} {'cpu p95':>8s} {'cpu mean':>9s} {'1-call':>7s} {'2-call':>7s} {'wall med':>9s} {'wall p95':>9s} {'t/s c1':>8s} {f't/s c{c}':>8s} {f'cpu c{c}':>8s}"
    print(head)
    for name, m in result["impls"].items():
        print(
            f"{name:16s} {m['cpu_ms_median']:8.3f} {m['cpu_ms_p95']:8.3f} {_fmt_rounds(m['cpu_ms_mean_by_round']):>9s}"
            f" {m['cpu_ms_mini_median']:7.3f} {m['cpu_ms_flagship_median']:7.3f}"
            f" {m['wall_ms_median']:9.3f} {m['wall_ms_p95']:9.3f} {_fmt_rounds(m['tps_c1_by_round'], 0):>8s}"
            f" {_fmt_rounds(m[f'tps_c{c}_by_round'], 0):>8s} {_fmt_rounds(m[f'cpu_ms_c{c}_by_round']):>8s}"
        )
    r = result["ratios"]
    print(
        f"\ntriagegate/floor CPU: {_fmt_rounds(r['cpu_mean_vs_floor_by_round'], 2)} (mean per round; per-ticket medians {r['cpu_median_vs_floor']:.2f}), target <= {TARGETS['cpu_vs_floor']}"
    )
    print(
        f"triagegate/peer  CPU: {_fmt_rounds(r['cpu_mean_vs_peer_by_round'], 2)} (mean per round; per-ticket medians {r['cpu_median_vs_peer']:.2f}), target <= {TARGETS['cpu_vs_peer']}"
    )
    if "tg-no-langgraph" in result["impls"]:
        means = {
            k: result["impls"][k]["cpu_ms_mean_by_round"] for k in ("floor", "triagegate", "tg-no-langgraph")
        }
        in_place = [t - n for t, n in zip(means["triagegate"], means["tg-no-langgraph"], strict=True)]
        own = [n / f for n, f in zip(means["tg-no-langgraph"], means["floor"], strict=True)]
        print(
            f"LangGraph in place (triagegate - tg-no-langgraph): {_fmt_rounds(in_place)} ms/ticket; "
            f"tg-no-langgraph/floor CPU: {_fmt_rounds(own, 2)}"
        )
    g = result["langgraph_cpu_ms_by_round"]
    print(
        f"LangGraph alone, CPU per run: empty 4-node graph {_fmt_rounds(g['empty_4_nodes'])} ms; triagegate's shape with stub nodes {_fmt_rounds(g['triagegate_shape'])} ms"
    )
    if "startup" in result:
        s = result["startup"]["ms"]
        print(
            f"start-up (median of {result['startup']['runs']}): bare python {s['bare_python']:.0f} ms; "
            f"import triagegate {s['import_minus_bare']:.0f} ms over bare (-X importtime {s['importtime_triagegate']:.0f} ms, target < {TARGETS['import_ms']:.0f}); "
            f"triagegate --help {s['help']:.0f} ms (target < {TARGETS['help_ms']:.0f}); "
            f"triagegate run: first model request after {s['run_to_first_request']:.0f} ms, whole run {s['run_whole']:.0f} ms"
        )
        heavy = result["startup"].get("heavy_modules_loaded_by_cli_import", [])
        print(
            f"modules imported by `import triagegate.cli` (what --help loads): {', '.join(heavy) or 'none of the heavy ones'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="triagegate overhead against a hand-written floor and a LangGraph + langchain-openai peer."
    )
    parser.add_argument("--tickets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--startup-runs", type=int, default=11)
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200 tickets, 2 rounds, 3 start-up runs")
    parser.add_argument("--label", default="", help="suffix for the JSON file name, e.g. 'before'")
    parser.add_argument(
        "--profile", choices=["triagegate", "peer", "floor"], help="profile one implementation instead"
    )
    args = parser.parse_args(argv)
    missing = [m for m in ("langchain_openai", "pyinstrument") if importlib.util.find_spec(m) is None]
    if missing:
        parser.exit(2, f"missing {', '.join(missing)}: run `make bench`, or pip install -e '.[bench]'\n")
    if args.quick:
        args.tickets, args.rounds, args.startup_runs = 200, 2, 3
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with loopback_server() as base_url:
        if args.profile:
            profile(base_url, args.profile, args.tickets)
            return 0
        result = asyncio.run(measure(base_url, args, OUT_DIR / "overhead-triagegate.log"))
        if not args.skip_startup:
            result["startup"] = startup(base_url, args.startup_runs)
    result["config"] = {k: v for k, v in vars(args).items() if k != "profile"}
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report(result, args)
    out = OUT_DIR / (f"overhead-{args.label}.json" if args.label else "overhead.json")
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
