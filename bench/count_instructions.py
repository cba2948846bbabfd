"""Instructions per ticket under valgrind's callgrind: overhead ratios without the machine's noise.

CPU time on a shared machine moves by 10-30% from one round to the next, which hides changes
of a few percent. Instruction counts do not move: the same code, input and environment give
the same count to within 0.2%. This script counts the instructions the client process spends
per ticket for the floor, triagegate without LangGraph (the ``tg-no-langgraph`` diagnostic) and
triagegate (``Pipeline.run``), the same three implementations and tickets as
``bench_overhead.py``, against the same loopback server (not counted: it is another process).

Each implementation runs in its own process under callgrind with instrumentation off; after a
warm-up the process waits, instrumentation is switched on with ``callgrind_control``, the
measured tickets run, and the counters are dumped. Instructions are not CPU time (LangGraph's
code runs fewer instructions per cycle than httpx's, so the CPU ratio is higher), but a change
that removes instructions removes time.

``--shapes`` counts LangGraph alone instead: graphs of empty nodes in the shapes triagegate's
graph has had (``StateGraph`` with ``Command`` routing before issue 7; ``StateGraph`` with
conditional edges since issue 13), per run (see :func:`langgraph_shape`).

    .venv/bin/python bench/count_instructions.py                 # 200 tickets each, ~2 min
    .venv/bin/python bench/count_instructions.py --shapes        # ~2 min

Needs ``valgrind`` (Debian package ``valgrind``). Writes ``bench/out/instructions*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_overhead import loopback_server
from overhead_impls import (
    ROOT,
    Floor,
    NodesOnly,
    Triagegate,
    capture_bodies,
    expected_route,
    make_tickets,
    whole_replies,
)

OUT_DIR = ROOT / "bench" / "out"
IMPLS = ("floor", "tg-no-langgraph", "triagegate")
WARM_UP = 100


async def _measured(setup: Callable[[], Awaitable[Callable[[int], Awaitable[None]]]], count: int) -> None:
    """The protocol with :func:`count`: warm up, say READY, wait for a line on stdin, run
    ``count`` units, say DONE, wait for a last line before exiting."""
    run = await setup()
    for i in range(WARM_UP):
        await run(i)
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for i in range(WARM_UP, WARM_UP + count):
        await run(i)
    print("DONE", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)


async def _impl_child(impl_name: str, base_url: str, count: int, whole: bool = False) -> None:
    from triagegate import log as tg_log

    if whole:
        whole_replies()
    with tempfile.TemporaryFile("w") as log_file:
        tg_log.configure(level="INFO", json=True, stream=log_file)
        tickets = make_tickets(WARM_UP + count)
        tg = Triagegate(base_url, tickets)
        impl: Any = tg
        if impl_name == "floor":
            codes = [chr(ord("A") + k) for k in range(len(tg.pipeline.spec.taxonomy.category_names))]
            impl = Floor(await capture_bodies(base_url, tickets), codes)
        elif impl_name == "tg-no-langgraph":
            impl = NodesOnly(tg)

        async def setup() -> Callable[[int], Awaitable[None]]:
            async def run(i: int) -> None:
                route = await impl.run(i)
                if route != expected_route(i):
                    raise AssertionError(
                        f"{impl_name}: ticket {i} went {route}, expected {expected_route(i)}"
                    )

            return run

        await _measured(setup, count)
        await impl.aclose()
        if impl is not tg:
            await tg.aclose()


async def _shape_child(shape: str, count: int) -> None:
    graph, state = langgraph_shape(shape)

    async def setup() -> Callable[[int], Awaitable[None]]:
        async def run(_i: int) -> None:
            await graph.ainvoke(dict(state))

        return run

    await _measured(setup, count)


def langgraph_shape(shape: str) -> tuple[Any, dict[str, Any]]:
    """A LangGraph graph whose nodes do nothing, and its input: ``<api>-<keys>keys-<steps>step``.

    ``stategraph``: a ``StateGraph`` over a state of ``keys`` keys (one with an ``operator.add``
    reducer), each node returning a ``Command`` that routes to the next or ends, as triagegate's
    graph did before issue 7; ``conditional``: the same state with the routing on conditional
    edges (from ``START`` and after the first node), as triagegate's graph does since issue 13.
    """
    import operator
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command

    api, keys_part, steps_part = shape.split("-")
    keys, steps = int(keys_part.removesuffix("keys")), int(steps_part.removesuffix("step"))
    names = ["run_id", "ticket", "outcome", "trail"] + [f"k{i}" for i in range(max(0, keys - 4))]
    state = {"run_id": "r", "ticket": "t"}
    hints: dict[str, Any] = dict.fromkeys(names, Any)
    hints["trail"] = Annotated[list, operator.add]
    schema = TypedDict("Schema", hints, total=False)  # type: ignore[operator]
    builder = StateGraph(schema)
    if api == "stategraph":

        async def first(_state: Any) -> Command[str]:
            return Command(update={"k0": 1, "trail": [1]}, goto="second" if steps == 2 else END)

        async def second(_state: Any) -> Command[str]:
            return Command(update={"outcome": 1, "trail": [2]}, goto=END)

        builder.add_node("first", first, destinations=("second", END))
        builder.add_node("second", second, destinations=(END,))
        builder.add_edge(START, "first")
        return builder.compile(), state
    if api != "conditional":
        raise ValueError(f"unknown shape {shape!r}")

    async def first_c(_state: Any) -> dict[str, Any]:
        return {"k0": 1, "trail": [1]}

    async def second_c(_state: Any) -> dict[str, Any]:
        return {"outcome": 1, "trail": [2]}

    builder.add_node("first", first_c)
    builder.add_node("second", second_c)
    builder.add_conditional_edges(START, lambda _s: "first", ["first", "second"])
    builder.add_conditional_edges("first", lambda _s: "second" if steps == 2 else END, ["second", END])
    builder.add_edge("second", END)
    return builder.compile(), state


def count(name: str, child_args: list[str], workdir: Path) -> int:
    """Instructions a child process (``--child ...`` or ``--shape ...``) spent between READY and DONE."""
    out = workdir / f"callgrind.{name}"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            *child_args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def expect(word: str) -> None:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != word:
            proc.kill()
            raise RuntimeError(f"{name}: expected {word} from the measured process, got {line!r}")

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(proc.pid)], check=True, capture_output=True)

    try:
        expect("READY")
        control("-i", "on")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        expect("DONE")
        control("-d")
        control("-i", "off")
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    dumps = sorted(workdir.glob(f"callgrind.{name}.*"))
    if not dumps:
        raise RuntimeError(f"{name}: callgrind wrote no dump")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{name}: no totals in {dumps[0]}")


SHAPES = (
    "stategraph-8keys-1step",
    "stategraph-8keys-2step",
    "conditional-8keys-1step",
    "conditional-8keys-2step",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per ticket under callgrind.")
    parser.add_argument("--tickets", type=int, default=200, help="measured tickets (or graph runs) each")
    parser.add_argument("--label", default="", help="suffix for the JSON file name")
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="count LangGraph graphs of empty nodes instead (see langgraph_shape)",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="fetch the mini tier's reply whole, not streamed (as before issue 13), in every implementation",
    )
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_impl_child(args.child, args.url, args.tickets, args.whole))
        return 0
    if args.shape:
        asyncio.run(_shape_child(args.shape, args.tickets))
        return 0
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.exit(2, "valgrind is not installed (Debian: apt-get install valgrind)\n")
    per_unit: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.shapes:
            for name in SHAPES:
                child = ["--shape", name, "--tickets", str(args.tickets)]
                per_unit[name] = count(name, child, Path(tmp)) / args.tickets
            print(f"\n{'LangGraph graph, empty nodes':28} {'M instr/run':>12}")
            for name, value in per_unit.items():
                print(f"{name:28} {value / 1e6:12.3f}")
        else:
            with loopback_server() as base_url:
                for name in IMPLS:
                    child = ["--child", name, "--url", base_url, "--tickets", str(args.tickets)]
                    child += ["--whole"] if args.whole else []
                    per_unit[name] = count(name, child, Path(tmp)) / args.tickets
            floor = per_unit["floor"]
            print(f"\n{'':18} {'M instr/ticket':>15} {'/ floor':>8}")
            for name, value in per_unit.items():
                print(f"{name:18} {value / 1e6:15.3f} {value / floor:8.2f}")
            print(
                f"LangGraph in place (triagegate - tg-no-langgraph): "
                f"{(per_unit['triagegate'] - per_unit['tg-no-langgraph']) / 1e6:.3f} M"
            )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = "instructions-shapes" if args.shapes else "instructions"
    out = OUT_DIR / (f"{stem}-{args.label}.json" if args.label else f"{stem}.json")
    out.write_text(json.dumps({"units": args.tickets, "per_unit": per_unit}, indent=2), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
