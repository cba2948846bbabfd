"""``eval --cascade`` and ``calibrate --cascade``: every tier measured, every tier's threshold fitted.

The labelled predictions come through one function, :func:`labelled_predictions`: DATA's
rows, each triaged once by every tier (:func:`triagegate.tuning.scoring.score_tiers`; live,
recorded with ``--record`` or replayed with ``--replay``). The rest is a pure search over
them (:mod:`triagegate.tuning.cascade`), so another source of labelled predictions (a
results store) plugs in by building a :class:`LabelledPredictions` and calling
:func:`cascade_report` or :func:`cascade_eval_report`.

Fitting uses one global threshold per gated tier; a tier's per-category thresholds are
replaced (``--write`` removes them), which the report says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from triagegate.errors import InputError
from triagegate.models.base import Capabilities, ModelBackend
from triagegate.spec import LoadedSpec
from triagegate.tuning import cascade as cc
from triagegate.tuning.scoring import DataOptions
from triagegate.types import Triage


@dataclass(frozen=True, kw_only=True)
class CascadeOptions(DataOptions):
    """What ``eval --cascade`` or ``calibrate --cascade`` was asked; see their ``--help``."""

    objective: cc.CascadeObjective | None = None
    """None for ``eval``."""
    calibration_fraction: float = 0.5
    limit: int | None = None
    sample: int | None = None
    write: bool = False


@dataclass
class LabelledPredictions:
    """Labelled tickets and every tier's triage of each: what cascade tuning fits on."""

    loaded: LoadedSpec
    labels: list[str]
    triages: dict[str, list[Triage]]
    """By tier name, one triage per ticket in label order."""
    capabilities: dict[str, Capabilities]
    """By tier name: the capabilities of the backend that triaged."""
    models: dict[str, str]
    """By tier name: ``alias: backend model`` for the report."""
    calls_usd: dict[str, float]
    """Estimated USD per call (:meth:`triagegate.cost.Estimator.calls_usd`)."""
    source: str
    split: dict[str, float] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def data(self) -> cc.CascadeData:
        return cc.cascade_data(self.loaded.spec, self.labels, self.triages, self.capabilities, self.calls_usd)


def labelled_predictions(
    options: CascadeOptions, environ: Mapping[str, str] | None = None
) -> LabelledPredictions:
    """DATA's rows (the test part of ``--split``, a ``--sample`` or ``--limit``) triaged by every tier.

    Raises :class:`InputError`, :class:`~triagegate.tuning.datasets.DatasetError` or
    :class:`~triagegate.errors.ConfigError` for bad options, data or graph, and
    :class:`~triagegate.errors.ReplayMiss` when a recording lacks a request.
    """
    from triagegate.cost import Estimator
    from triagegate.models.recording import recorded
    from triagegate.pipeline import default_cache_dir
    from triagegate.prompts import load_graph_templates
    from triagegate.tuning.datasets import load_labeled
    from triagegate.tuning.scoring import (
        check_labels,
        open_graph,
        options_backend,
        score_tiers,
        split_rows,
        split_summary,
        tickets_for,
        tier_view,
        triage_backend,
    )

    env, loaded = open_graph(options, environ)
    spec = loaded.spec
    if len(spec.tiers) < 2:
        raise InputError(f"{options.graph} has one tier: there is no cascade to measure")
    rows = load_labeled(options.data, text_col=options.text_col, label_col=options.label_col)
    check_labels(rows, spec, options.data)
    notes: list[str] = []
    train_rows, rows = split_rows(rows, options, options.sample, notes)
    if options.limit is not None:
        rows = rows[: options.limit]
    if not rows:
        raise InputError(f"{options.data}: no rows to measure")
    alias, first, note = options_backend(loaded, options, train_rows, env)
    if note:
        notes.append(note)
    backends: list[ModelBackend] = [first]
    aliases = [alias]
    for i in range(1, len(spec.tiers)):
        view = tier_view(loaded, i)
        tier_alias, built = triage_backend(view, environ=env, cache_dir=default_cache_dir(env))
        backends.append(recorded(tier_alias, built, options.record, view.spec.models, env))
        aliases.append(tier_alias)

    async def go() -> list[list[Triage]]:
        try:
            return await score_tiers(loaded, tickets_for(rows), backends, concurrency=options.concurrency)
        finally:
            for backend in backends:
                await backend.aclose()

    started = time.perf_counter()
    triages = asyncio.run(go())
    seconds = time.perf_counter() - started
    names = spec.tier_names
    for name, column in zip(names, triages, strict=True):
        failed = [t.error for t in column if t.error]
        if failed:
            notes.append(f"{len(failed)} {name} triage call(s) failed (they escalate), e.g. {failed[0]}")
    estimator = Estimator(spec, load_graph_templates(loaded), triage=first.capabilities)
    mean_chars = sum(len(r.text) for r in rows) / len(rows)
    return LabelledPredictions(
        loaded=loaded,
        labels=[r.label for r in rows],
        triages=dict(zip(names, triages, strict=True)),
        capabilities={n: b.capabilities for n, b in zip(names, backends, strict=True)},
        models={
            n: f"{a}: {spec.models[a].backend} {b.model}"
            for n, a, b in zip(names, aliases, backends, strict=True)
        },
        calls_usd=estimator.calls_usd(mean_chars),
        source=f"{options.data} ({len(rows)} labelled rows, each triaged by every tier)",
        split=split_summary(options.split_fraction, options.seed, len(train_rows), len(rows)),
        seconds=seconds,
        notes=notes,
    )


class _Measured(BaseModel):
    """What both cascade reports say of the data and the tiers."""

    graph: str
    data: str
    tickets: int
    models: dict[str, str]
    """By tier name: ``alias: backend model``."""
    split: dict[str, float | int] | None = None
    calls_usd: dict[str, float]
    """Estimated USD per call (a tier's, ``<tier>:draft``)."""
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)


class CascadeEvalReport(_Measured):
    """``eval --cascade``: the cascade at the graph's thresholds, each tier's curve, and the last tier alone."""

    at_graph: cc.CascadePoint
    last_alone: cc.CascadePoint
    tier_curves: list[cc.TierCurve]


class CascadeCurveRow(BaseModel):
    """One point of the cascade's curve: fitted on the calibration part, reported on both."""

    calibration: cc.CascadePoint
    held_out: cc.CascadePoint


class CascadeReport(_Measured):
    """``calibrate --cascade``: the thresholds fitted on the calibration part, reported on the held-out part."""

    calibration_tickets: int
    held_out_tickets: int
    seed: int
    fit: cc.CascadeFit
    held_out: cc.CascadePoint
    """The chosen thresholds on the held-out tickets."""
    feasible_held_out: bool
    at_graph: cc.CascadePoint
    """The graph's current thresholds on the held-out tickets."""
    last_alone: cc.CascadePoint
    """The last tier answering every held-out ticket."""
    curve: list[CascadeCurveRow]
    tier_curves: list[cc.TierCurve]
    """Each gated tier's curve on the held-out tickets reaching it at the chosen thresholds."""
    patch: str
    wrote: str | None = None
    fit_seconds: float = 0.0


def cascade_eval_report(predictions: LabelledPredictions, options: CascadeOptions) -> CascadeEvalReport:
    """The cascade replayed at the graph's own thresholds over ``predictions`` (pure)."""
    data = predictions.data()
    return CascadeEvalReport(
        **_measured(predictions, options, len(data)),
        at_graph=cc.point(data, data.current),
        last_alone=cc.last_tier_alone(data),
        tier_curves=cc.tier_curves(data, data.current),
        seconds=round(predictions.seconds, 4),
    )


def _measured(predictions: LabelledPredictions, options: CascadeOptions, tickets: int) -> dict[str, Any]:
    return {
        "graph": str(options.graph),
        "data": str(options.data),
        "tickets": tickets,
        "models": predictions.models,
        "split": predictions.split,
        "calls_usd": predictions.calls_usd,
        "notes": [*predictions.notes, *_caveats(predictions)],
    }


def _caveats(predictions: LabelledPredictions) -> list[str]:
    spec = predictions.loaded.spec
    notes = [
        f"the last tier ({spec.last_tier.name}) is scored on its category when it triages with the first tier's "
        "prompt; costs are estimates (prompt length / 4 tokens in, max_tokens out)"
    ]
    own = [t.name for t in spec.tiers[:-1] if t.gate is not None and t.gate.category_thresholds]
    if own:
        notes.append(
            f"tiers {', '.join(own)} have per-category thresholds; the cascade is replayed with their global "
            "threshold only, and --write removes the per-category ones"
        )
    return notes


def cascade_report(predictions: LabelledPredictions, options: CascadeOptions) -> CascadeReport:
    """Fit every gated tier's threshold on the calibration part and report it on the held-out part.

    With ``options.write`` the graph file is patched (every gated tier's gate, one write)
    only when the objective is met on the calibration tickets.
    """
    from triagegate.tuning.calibration import split_indices
    from triagegate.tuning.gate_patch import snippet

    if options.objective is None:
        raise InputError("calibrate --cascade needs --target-accuracy")
    data = predictions.data()
    if len(data) < 4:
        raise InputError(
            f"{options.data}: {len(data)} rows to calibrate on; need at least 4 (2 to fit, 2 to hold out)"
        )
    fitting, held = split_indices(len(data), options.calibration_fraction, options.seed)
    calibration_part, held_out_part = data.subset(fitting), data.subset(held)
    started = time.perf_counter()
    fitted = cc.fit(calibration_part, options.objective)
    fit_seconds = time.perf_counter() - started
    chosen = tuple(fitted.thresholds.values())
    held_out = cc.point(held_out_part, chosen)
    loaded = predictions.loaded
    spec = loaded.spec
    patches = []
    for index, tier in enumerate(spec.tiers[:-1]):
        name = None if loaded.legacy else tier.name
        patches.append(snippet(fitted.thresholds[tier.name], {}, tier=name, index=index))
    report = CascadeReport(
        **_measured(predictions, options, len(data)),
        calibration_tickets=len(calibration_part),
        held_out_tickets=len(held_out_part),
        seed=options.seed,
        fit=fitted,
        held_out=held_out,
        feasible_held_out=held_out.accuracy >= options.objective.target_accuracy
        and (
            options.objective.max_last_share is None
            or held_out.last_share <= options.objective.max_last_share
        )
        and (options.objective.budget is None or held_out.cost_per_1000 <= options.objective.budget),
        at_graph=cc.point(held_out_part, data.current),
        last_alone=cc.last_tier_alone(held_out_part),
        curve=[
            CascadeCurveRow(calibration=cc.point(calibration_part, c), held_out=cc.point(held_out_part, c))
            for c in fitted.frontier
        ],
        tier_curves=cc.tier_curves(held_out_part, chosen),
        patch="".join(patches),
        fit_seconds=round(fit_seconds, 4),
    )
    if options.write:
        _write(report, predictions, options.graph)
    return report


def _write(report: CascadeReport, predictions: LabelledPredictions, graph: Path) -> None:
    from triagegate.tuning.gate_patch import patch_tiers_file

    if not report.fit.feasible:
        report.notes.append(f"not writing {graph}: the objective is not met on the calibration tickets")
        return
    legacy = predictions.loaded.legacy
    gates: dict[str | None, tuple[float, Mapping[str, float]]] = {
        (None if legacy else name): (threshold, {}) for name, threshold in report.fit.thresholds.items()
    }
    patch_tiers_file(graph, gates)
    report.wrote = str(graph)


def evaluate_cascade(
    options: CascadeOptions, *, environ: Mapping[str, str] | None = None
) -> CascadeEvalReport:
    """``triagegate eval --cascade`` without its printing."""
    return cascade_eval_report(labelled_predictions(options, environ), options)


def calibrate_cascade(options: CascadeOptions, *, environ: Mapping[str, str] | None = None) -> CascadeReport:
    """``triagegate calibrate --cascade`` without its printing."""
    return cascade_report(labelled_predictions(options, environ), options)
