"""Run every benchmark script in bench/ (``bench_*.py``), one after another, in fresh processes.

Each script prints its own table and writes its JSON to bench/out/; this only runs them
and says which failed, so adding a benchmark is adding a ``bench_<name>.py`` file.

    .venv/bin/python bench/run_all.py               # all of them (what ``make bench`` runs)
    .venv/bin/python bench/run_all.py overhead      # only bench_overhead.py
    .venv/bin/python bench/run_all.py --quick       # smoke sizes, for scripts that offer --quick
    .venv/bin/python bench/run_all.py --list

Exit status is 1 when any script failed (or a name matched no script), else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts(names: list[str]) -> tuple[list[Path], list[str]]:
    """The bench scripts to run, in name order, and the requested names that matched none."""
    found = sorted(BENCH.glob("bench_*.py"))
    if not names:
        return found, []
    wanted = {n.removeprefix("bench_").removesuffix(".py") for n in names}
    chosen = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    missing = sorted(wanted - {p.stem.removeprefix("bench_") for p in chosen})
    return chosen, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark scripts in bench/.")
    parser.add_argument("names", nargs="*", help="run only these (e.g. overhead for bench_overhead.py)")
    parser.add_argument("--list", action="store_true", help="list the scripts and exit")
    parser.add_argument("--quick", action="store_true", help="pass --quick to the scripts that accept it")
    args = parser.parse_args(argv)
    chosen, missing = scripts(args.names)
    for name in missing:
        print(f"no bench script for {name!r}", file=sys.stderr)
    if args.list:
        print("\n".join(p.name for p in chosen))
        return 1 if missing else 0
    results: list[tuple[str, int, float]] = []
    for path in chosen:
        print(f"\n=== {path.name} ===", flush=True)
        started = time.perf_counter()
        extra = ["--quick"] if args.quick and '"--quick"' in path.read_text(encoding="utf-8") else []
        code = subprocess.run([sys.executable, str(path), *extra], cwd=BENCH.parent).returncode
        results.append((path.name, code, time.perf_counter() - started))
    print("\n=== summary ===")
    for name, code, seconds in results:
        print(f"{name:28s} {'ok' if code == 0 else f'FAILED ({code})':12s} {seconds:7.1f} s")
    return 1 if missing or any(code for _, code, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
