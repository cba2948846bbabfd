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

    .venv/bin/python bench/count_instructions.py                 # 200 tickets each, ~2 min
    .venv/bin/python bench/count_instructions.py --tickets 400

Needs ``valgrind`` (Debian package ``valgrind``). Writes ``bench/out/instructions.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_overhead import loopback_server
from overhead_impls import ROOT, Floor, NodesOnly, Triagegate, capture_bodies, expected_route, make_tickets

OUT_DIR = ROOT / "bench" / "out"
IMPLS = ("floor", "tg-no-langgraph", "triagegate")
WARM_UP = 100


async def _child(impl_name: str, base_url: str, count: int) -> None:
    """Warm up, say READY, wait for a line on stdin, run ``count`` tickets, say DONE."""
    from triagegate import log as tg_log

    with tempfile.TemporaryFile("w") as log_file:
        tg_log.configure(level="INFO", json=True, stream=log_file)
        tickets = make_tickets(WARM_UP + count)
        tg = Triagegate(base_url, tickets)
        impl: Any
        if impl_name == "floor":
            codes = [chr(ord("A") + k) for k in range(len(tg.pipeline.spec.taxonomy.category_names))]
            impl = Floor(await capture_bodies(base_url, tickets), codes)
        elif impl_name == "tg-no-langgraph":
            impl = NodesOnly(tg)
        else:
            impl = tg
        for i in range(WARM_UP):
            await impl.run(i)
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for i in range(WARM_UP, WARM_UP + count):
            route = await impl.run(i)
            if route != expected_route(i):
                raise AssertionError(f"{impl_name}: ticket {i} went {route}, expected {expected_route(i)}")
        print("DONE", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await impl.aclose()
        if impl is not tg:
            await tg.aclose()


def count(impl_name: str, base_url: str, tickets: int, workdir: Path) -> int:
    """Instructions the client spent on ``tickets`` tickets of ``impl_name``."""
    out = workdir / f"callgrind.{impl_name}"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            impl_name,
            "--url",
            base_url,
            "--tickets",
            str(tickets),
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
            raise RuntimeError(f"{impl_name}: expected {word} from the measured process, got {line!r}")

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
    dumps = sorted(workdir.glob(f"callgrind.{impl_name}.*"))
    if not dumps:
        raise RuntimeError(f"{impl_name}: callgrind wrote no dump")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{impl_name}: no totals in {dumps[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per ticket under callgrind.")
    parser.add_argument("--tickets", type=int, default=200)
    parser.add_argument("--label", default="", help="suffix for the JSON file name")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_child(args.child, args.url, args.tickets))
        return 0
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.exit(2, "valgrind is not installed (Debian: apt-get install valgrind)\n")
    per_ticket: dict[str, float] = {}
    with loopback_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        for name in IMPLS:
            per_ticket[name] = count(name, base_url, args.tickets, Path(tmp)) / args.tickets
            print(f"{name}: {per_ticket[name] / 1e6:.3f} M instructions per ticket", file=sys.stderr)
    floor = per_ticket["floor"]
    print(f"\n{'':18} {'M instr/ticket':>15} {'/ floor':>8}")
    for name, value in per_ticket.items():
        print(f"{name:18} {value / 1e6:15.3f} {value / floor:8.2f}")
    print(
        f"LangGraph in place (triagegate - tg-no-langgraph): "
        f"{(per_ticket['triagegate'] - per_ticket['tg-no-langgraph']) / 1e6:.3f} M"
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / (f"instructions-{args.label}.json" if args.label else "instructions.json")
    out.write_text(
        json.dumps({"tickets": args.tickets, "per_ticket": per_ticket}, indent=2), encoding="utf-8"
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
