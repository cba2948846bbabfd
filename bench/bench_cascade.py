"""A 3-tier cascade on BANKING77, every threshold fitted by ``calibrate --cascade``'s search (issue 13).

Tiers, cheapest first:

1. ``classifier``: triagegate's TF-IDF classifier (``training.fit``, kind ``tfidf``) trained
   on BANKING77's 10,003 training rows; a kept ticket's answer is drafted by the small model
   (its cost is counted).
2. ``small``: a **simulated** small LLM (``backend: scripted``). For each test ticket, a
   random generator seeded with ``--seed`` and the ticket's row decides whether it names the
   right intent: with probability 0.88 when the classifier got the ticket right, 0.60 when it
   did not (hard tickets are hard for both), 0.80 overall-ish. Its stated confidence is drawn
   from Beta(8, 2) when right and Beta(3, 4) when wrong; a wrong answer is the classifier's
   runner-up intent when that is wrong too, else a seeded random other intent.
3. ``flagship``: a **simulated** flagship (``backend: scripted``), right with probability 0.96
   when the classifier was right and 0.85 when it was not.

The simulated tiers reply through the real triage node (JSON parsing, the gate), and each
tier triages every test ticket once (:func:`triagegate.tuning.scoring.score_tiers`). The test
file is split in half (seeded): every gated tier's threshold is fitted on one half for the
cheapest cascade with answer accuracy >= each ``--target`` (:func:`triagegate.tuning.cascade.fit`)
and the other half is reported. Costs are triagegate's estimates (:mod:`triagegate.cost`) at
the prices below (USD per million tokens, input/output). Prints a table and writes
``bench/out/cascade_banking77.json``.

    .venv/bin/python bench/bench_cascade.py [--target 0.93 0.96] [--seed 13]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _procs import OUT, REPO, machine
from bench_classifier import DATA, banking77_rows

from triagegate.cost import Estimator
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ChatRequest
from triagegate.prompts import load_graph_templates
from triagegate.spec import load_spec
from triagegate.tuning import training
from triagegate.tuning.cascade import CascadeObjective
from triagegate.tuning.cascade_tuning import CascadeOptions, LabelledPredictions, cascade_report
from triagegate.tuning.datasets import LabeledText
from triagegate.tuning.scoring import score_tiers, tickets_for, tier_view, triage_tickets

PRICES = {"small": (0.15, 0.60), "flagship": (2.50, 10.00)}
SMALL_RIGHT = (0.88, 0.60)
FLAGSHIP_RIGHT = (0.96, 0.85)
TICKET = re.compile(r"<ticket>\n(.*)\n</ticket>", re.DOTALL)


def write_graph(directory: Path, categories: list[str], model: Path) -> Path:
    doc = {
        "version": 1,
        "name": "banking77-cascade",
        "prompts": str(REPO / "prompts"),
        "models": {
            "classifier": {
                "backend": "classifier",
                "model": "tfidf-linear",
                "options": {"model_path": str(model)},
            },
            "small": {
                "backend": "scripted",
                "model": "simulated-small",
                "price": {"input": PRICES["small"][0], "output": PRICES["small"][1]},
            },
            "flagship": {
                "backend": "scripted",
                "model": "simulated-flagship",
                "price": {"input": PRICES["flagship"][0], "output": PRICES["flagship"][1]},
                "capabilities": {"vision": True},
            },
        },
        "tiers": [
            {
                "name": "classifier",
                "model": "classifier",
                "prompt": "triage.md",
                "draft": {"model": "small", "prompt": "answer.md", "max_tokens": 300},
                # only the confidence threshold: BANKING77's intents have no priorities or rules
                "gate": {"threshold": 0.9, "always_escalate": {"complexity": [], "priorities": []}},
            },
            {
                "name": "small",
                "model": "small",
                "prompt": "triage.md",
                "max_tokens": 400,
                "gate": {"threshold": 0.8, "always_escalate": {"complexity": [], "priorities": []}},
            },
            {"name": "flagship", "model": "flagship", "prompt": "escalate.md", "max_tokens": 800},
        ],
        "taxonomy": {"categories": [{"name": c} for c in categories]},
    }
    path = directory / "banking77-cascade.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def simulated(
    rows: list[LabeledText], first: list[Any], categories: list[str], seed: int
) -> dict[str, dict[str, tuple[str, float]]]:
    """``{ticket text: {tier: (category, confidence)}}`` for the two simulated LLM tiers."""
    out: dict[str, dict[str, tuple[str, float]]] = {}
    for row, triage in zip(rows, first, strict=True):
        rng = random.Random(f"{seed}:{row.line}")
        easy = triage.category == row.label
        runner_up = next(iter(triage.alternatives), None)
        wrong = _wrong(rng, row.label, runner_up, categories)
        small_right = rng.random() < SMALL_RIGHT[0 if easy else 1]
        small_conf = rng.betavariate(8, 2) if small_right else rng.betavariate(3, 4)
        flagship_right = rng.random() < FLAGSHIP_RIGHT[0 if easy else 1]
        out[row.text] = {
            "small": (row.label if small_right else wrong, round(small_conf, 4)),
            "flagship": (
                row.label if flagship_right else _wrong(rng, row.label, runner_up, categories),
                0.99,
            ),
        }
    return out


def _wrong(rng: random.Random, label: str, runner_up: str | None, categories: list[str]) -> str:
    """A wrong intent: the classifier's runner-up half the time (when it is wrong), else a random one."""
    if runner_up is not None and runner_up != label and rng.random() < 0.5:
        return runner_up
    return rng.choice([c for c in categories if c != label])


def handlers(answers: dict[str, dict[str, tuple[str, float]]]) -> dict[str, Any]:
    def lookup(request: ChatRequest) -> dict[str, tuple[str, float]]:
        user = request.messages[-1].text
        match = TICKET.search(user)
        if match is not None and match.group(1) in answers:
            return answers[match.group(1)]
        return next(v for k, v in answers.items() if k in user)

    def reply(tier: str) -> Any:
        def chat(request: ChatRequest) -> str:
            if request.json_schema is None:
                return "Drafted answer."
            category, confidence = lookup(request)[tier]
            body: dict[str, Any] = {"category": category, "priority": "normal", "answer": "An answer."}
            if request.json_schema.name == "triage":
                body.update(complexity="low", needs_vision=False, confidence=confidence)
            return json.dumps(body)

        return chat

    return {"scripted": {"small": {"chat": reply("small")}, "flagship": {"chat": reply("flagship")}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--target",
        type=float,
        nargs="+",
        default=[0.93, 0.96],
        help="answer accuracies the cascade must reach",
    )
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    if not (DATA / "banking77-train.csv").exists():
        print(f"skipped: BANKING77 is not at {DATA} (see ../shared/data/README.md)")
        return 0
    train, test = banking77_rows()
    categories = sorted({r.label for r in train})
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model = training.fit(
            [r.text for r in train], [r.label for r in train], kind="tfidf", source="banking77"
        )
        train_seconds = time.perf_counter() - started
        path = training.save(model, Path(tmp) / "banking77.skops")
        graph = write_graph(Path(tmp), categories, path)
        loaded = load_spec(graph, environ={})
        spec = loaded.spec
        tickets = tickets_for(test)

        async def tiers() -> tuple[list[list[Any]], list[Any]]:
            context = BuildContext(loaded=loaded, environ={}, cache_dir=Path(tmp))
            first = build_backends(context, ["classifier"])["classifier"]
            classifier = await triage_tickets(loaded, tickets, first)
            extras = handlers(simulated(test, classifier, categories, args.seed))
            backends = [first]
            for i in (1, 2):
                view = tier_view(loaded, i)
                alias = view.spec.first_tier.model
                built = build_backends(
                    BuildContext(loaded=view, environ={}, cache_dir=Path(tmp), extras=extras), [alias]
                )
                backends.append(built[alias])
            return await score_tiers(loaded, tickets, backends), backends

        started = time.perf_counter()
        triages, backends = asyncio.run(tiers())
        triage_seconds = time.perf_counter() - started
        estimator = Estimator(spec, load_graph_templates(loaded), triage=backends[0].capabilities)
        mean_chars = sum(len(r.text) for r in test) / len(test)
        predictions = LabelledPredictions(
            loaded=loaded,
            labels=[r.label for r in test],
            triages=dict(zip(spec.tier_names, triages, strict=True)),
            capabilities={n: b.capabilities for n, b in zip(spec.tier_names, backends, strict=True)},
            models={
                "classifier": f"classifier: tfidf trained on {len(train)} BANKING77 rows",
                "small": "small: simulated (scripted), see bench_cascade.py",
                "flagship": "flagship: simulated (scripted), see bench_cascade.py",
            },
            calls_usd=estimator.calls_usd(mean_chars),
            source=f"BANKING77 test ({len(test)} rows)",
        )
        reports = [
            cascade_report(
                predictions,
                CascadeOptions(
                    graph=graph,
                    data=DATA / "banking77-test.csv",
                    objective=CascadeObjective(target_accuracy=target),
                    seed=args.seed,
                ),
            )
            for target in args.target
        ]
    accuracy = {
        name: sum(t.category == r.label for t, r in zip(column, test, strict=True)) / len(test)
        for name, column in predictions.triages.items()
    }
    first = reports[0]
    alone, at_graph = first.last_alone, first.at_graph
    result: dict[str, Any] = {
        "seed": args.seed,
        "tickets": {
            "train": len(train),
            "test": len(test),
            "fit": first.calibration_tickets,
            "held_out": first.held_out_tickets,
        },
        "tier_accuracy_alone": accuracy,
        "simulation": {
            "small_right": SMALL_RIGHT,
            "flagship_right": FLAGSHIP_RIGHT,
            "prices_per_million": PRICES,
        },
        "graph_defaults_held_out": at_graph.model_dump(),
        "all_flagship_held_out": alone.model_dump(),
        "calls_usd": first.calls_usd,
        "fits": [
            {
                "target_accuracy": target,
                "thresholds": report.fit.thresholds,
                "feasible": {"fit": report.fit.feasible, "held_out": report.feasible_held_out},
                "held_out": report.held_out.model_dump(),
                "cost_ratio_vs_all_flagship": report.held_out.cost_per_1000 / alone.cost_per_1000,
                "combinations": report.fit.combinations,
                "fit_seconds": report.fit_seconds,
            }
            for target, report in zip(args.target, reports, strict=True)
        ],
        "curve_held_out": [
            {
                "thresholds": row.held_out.thresholds,
                "accuracy": row.held_out.accuracy,
                "cost_per_1000": row.held_out.cost_per_1000,
            }
            for row in reports[-1].curve
        ],
        "seconds": {"train": train_seconds, "triage_all_tiers": triage_seconds},
        "machine": machine(),
    }
    print(
        f"BANKING77: classifier trained on {len(train)} rows in {train_seconds:.1f} s; {len(test)} test tickets"
    )
    print(
        "accuracy of each tier alone on all test tickets: "
        + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    )
    print(
        f"thresholds fitted on {first.calibration_tickets} tickets, reported on {first.held_out_tickets} held out"
    )
    names = [t.name for t in at_graph.tiers]
    print(
        f"{'':34} {'accuracy':>9} {'$ / 1k':>9} {'x flagship':>10} "
        + " ".join(f"{n + ' answers':>18}" for n in names)
    )
    rows = [
        (f"target {t}: {r.fit.thresholds}", r.held_out) for t, r in zip(args.target, reports, strict=True)
    ]
    for label, p in [*rows, ("graph defaults {0.9, 0.8}", at_graph)]:
        print(
            f"{label:34} {p.accuracy:9.3f} {p.cost_per_1000:9.3f} {p.cost_per_1000 / alone.cost_per_1000:10.3f} "
            + " ".join(f"{t.answered:18.3f}" for t in p.tiers)
        )
    print(f"{'all flagship':34} {alone.accuracy:9.3f} {alone.cost_per_1000:9.3f} {1.0:10.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cascade_banking77.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
