"""``triagegate calibrate`` without its printing: measure the first tier, fit thresholds, build the report.

:mod:`triagegate.tuning.calibration` holds the fitting, as pure functions of arrays; this
module gathers what it fits on. The evaluated rows are triaged by the graph's first tier
through the one runner (:func:`triagegate.tuning.scoring.triage_tickets`), so chat-model
confidences, repair retries and failures are calibrated as they behave.

The gate has rules besides confidence; :func:`forced_routes` applies the first tier's own
:func:`~triagegate.gate.decide` with the confidence thresholds taken out, so calibration
knows which tickets escalate (or stay) whatever their confidence.

The flagship can stand in for labels: :func:`~triagegate.tuning.scoring.flagship_view` is
the graph with the first tier bound to the last tier's alias, so the flagship triages a
sample with the same prompt (live, recorded with ``--record``, or replayed with
``--replay``) and its categories serve as the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from triagegate.errors import InputError
from triagegate.gate import decide
from triagegate.spec import GatePolicy, LoadedSpec
from triagegate.tuning import calibration as cal
from triagegate.tuning.datasets import LabeledText, MissingColumn, load_unlabeled
from triagegate.tuning.report import CalibrateReport
from triagegate.tuning.scoring import DataOptions
from triagegate.types import Triage

Reference = Literal["labels", "flagship"]


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions(DataOptions):
    """What ``triagegate calibrate`` was asked; see its ``--help`` for each option."""

    objective: cal.Objective
    calibration_fraction: float = 0.5
    per_category: bool = True
    min_support: int = cal.DEFAULT_MIN_SUPPORT
    reference: Reference | None = None
    """None: DATA's labels, or the flagship when DATA has no label column."""
    flagship_accuracy: float | None = None
    sample: int | None = None
    resamples: int = cal.DEFAULT_RESAMPLES
    plot_path: Path | None = None
    write: bool = False
    """Patch the first tier's gate in the graph file when the objective is met on the calibration tickets."""
    store: str | None = None
    """Record the first tier's confidences on DATA in this outcome store, as the report's drift reference."""


def forced_routes(triages: Sequence[Triage], policy: GatePolicy, *, mini_has_vision: bool) -> list[int]:
    """Per ticket: escalated or kept by the gate whatever the confidence, or left to the threshold."""
    open_policy = policy.model_copy(update={"threshold": 0.0, "category_thresholds": {}})
    out = []
    for triage in triages:
        if decide(triage, open_policy, mini_has_vision=mini_has_vision).escalate:
            out.append(cal.FORCED_ESCALATE)
        elif triage.category in policy.never_escalate.categories:
            out.append(cal.FORCED_KEEP)
        else:
            out.append(cal.THRESHOLD_DECIDES)
    return out


@dataclass(frozen=True)
class _Reference:
    """The label each kept ticket is scored against, and the flagship accuracy the economics assume."""

    keep: list[int]
    labels: dict[int, str]
    described: str
    flagship_accuracy: float
    source: str


def _reference(
    options: CalibrateOptions,
    loaded: LoadedSpec,
    rows: Sequence[LabeledText],
    flagship: Sequence[Triage] | None,
    *,
    use_flagship: bool,
    labeled: bool,
    notes: list[str],
) -> _Reference:
    spec = loaded.spec
    given = options.flagship_accuracy
    if use_flagship:
        assert flagship is not None
        escalate = spec.last_tier.model
        keep = [i for i, t in enumerate(flagship) if t.error is None]
        labels = {i: flagship[i].category for i in keep}
        if labeled:
            agree = sum(labels[i] == rows[i].label for i in keep)
            notes.append(f"the flagship agrees with DATA's labels on {agree} of {len(keep)} tickets")
        described = (
            f"the flagship's triage category ({escalate} ({spec.models[escalate].model or 'no model name'})), "
            "not DATA's labels"
        )
        if given is not None:
            return _Reference(keep, labels, described, given, "given with --flagship-accuracy")
        return _Reference(keep, labels, described, 1.0, "1.0 by definition: the flagship is the reference")
    keep = list(range(len(rows)))
    labels = {i: rows[i].label for i in keep}
    described = f"DATA's label column ({Path(options.data).name})"
    if given is not None:
        return _Reference(keep, labels, described, given, "given with --flagship-accuracy")
    answered = [i for i, t in enumerate(flagship or []) if t.error is None]
    if flagship and answered:
        right = sum(flagship[i].category == rows[i].label for i in answered)
        source = f"measured: the recorded flagship triage matched DATA's labels on {right} of {len(answered)} tickets"
        return _Reference(keep, labels, described, right / len(answered), source)
    source = (
        "assumed 1.0 (no recorded flagship answers): every escalated ticket is counted as answered "
        "correctly; pass --flagship-accuracy to change it"
    )
    return _Reference(keep, labels, described, 1.0, source)


def calibrate(options: CalibrateOptions, *, environ: Mapping[str, str] | None = None) -> CalibrateReport:
    """Triage DATA, fit the thresholds, report them on held-out rows, and patch the graph if asked.

    With ``write``, the graph file is patched (:func:`~triagegate.tuning.gate_patch.patch_file`)
    only when the chosen policy meets the objective on the calibration tickets; the report's
    ``wrote`` names the file, or stays None with a note saying why not. Raises
    :class:`InputError`, :class:`DatasetError` or :class:`ConfigError` for bad options, data
    or graph, and :class:`~triagegate.errors.ReplayMiss` when a recording lacks a request.
    """
    from triagegate.models.recording import recorded
    from triagegate.models.replay import replay_path
    from triagegate.pipeline import default_cache_dir
    from triagegate.tuning.datasets import load_labeled
    from triagegate.tuning.scoring import (
        check_labels,
        flagship_view,
        open_graph,
        options_backend,
        route_costs,
        split_rows,
        split_summary,
        tickets_for,
        triage_backend,
        triage_tickets,
    )

    env, loaded = open_graph(options, environ)
    spec = loaded.spec
    try:
        rows = load_labeled(options.data, text_col=options.text_col, label_col=options.label_col)
        labeled = True
    except MissingColumn as exc:
        if exc.kind != "label" or options.label_col is not None or options.reference == "labels":
            raise
        rows, labeled = load_unlabeled(options.data, options.text_col), False
    use_flagship = options.reference == "flagship" or not labeled
    notes: list[str] = []
    if labeled and not use_flagship:
        check_labels(rows, spec, options.data)
    fraction, seed = options.split_fraction, options.seed
    train_rows, rows = split_rows(rows, options, options.sample, notes)
    if len(rows) < 4:
        raise InputError(
            f"{options.data}: {len(rows)} rows to calibrate on; need at least 4 (2 to fit, 2 to hold out)"
        )
    alias, backend, note = options_backend(loaded, options, train_rows, env)
    if note:
        notes.append(note)
    replaying = replay_path(options.replay, env) is not None
    want_flagship = use_flagship or (labeled and options.flagship_accuracy is None and replaying)
    tickets = tickets_for(rows)

    async def triage() -> tuple[list[Triage], list[Triage] | None]:
        try:
            mini = await triage_tickets(loaded, tickets, backend, concurrency=options.concurrency)
        finally:
            await backend.aclose()
        if not want_flagship:
            return mini, None
        view = flagship_view(loaded)
        flagship_alias, built = triage_backend(view, environ=env, cache_dir=default_cache_dir(env))
        flagship = recorded(flagship_alias, built, options.record, view.spec.models, env)
        misses: Literal["raise", "fail"] = "raise" if use_flagship else "fail"
        try:
            return mini, await triage_tickets(
                view, tickets, flagship, concurrency=options.concurrency, replay_misses=misses
            )
        finally:
            await flagship.aclose()

    mini, flagship = asyncio.run(triage())
    ref = _reference(options, loaded, rows, flagship, use_flagship=use_flagship, labeled=labeled, notes=notes)
    keep = ref.keep
    if len(keep) < 4:
        raise InputError(f"only {len(keep)} tickets have a reference label; need at least 4")
    scored = [(ref.labels[i], mini[i].category, mini[i].confidence) for i in keep]
    policy = spec.gate_of(spec.first_tier.name)
    forced = forced_routes([mini[i] for i in keep], policy, mini_has_vision=backend.capabilities.vision)
    arrays = cal.Tickets.from_scored(scored, forced)
    fitting, held = cal.split_indices(len(scored), options.calibration_fraction, seed)
    cost = route_costs(loaded, backend, sum(len(rows[i].text) for i in keep) / len(keep))
    economics = cal.Economics.from_cost(cost, ref.flagship_accuracy, ref.source)
    calibration_part, held_out_part = arrays.subset(fitting), arrays.subset(held)
    result = cal.calibrate(
        calibration_part,
        held_out_part,
        options.objective,
        economics,
        per_category=options.per_category,
        min_support=options.min_support,
        resamples=options.resamples,
        seed=seed,
    )
    failed = [mini[i].error for i in keep if mini[i].error]
    if failed:
        notes.append(f"{len(failed)} mini triage call(s) failed and count as escalated, e.g. {failed[0]}")
    if len(rows) > len(keep):
        notes.append(f"{len(rows) - len(keep)} ticket(s) left out: the flagship's triage failed on them")
    forced_count = sum(1 for f in forced if f != cal.THRESHOLD_DECIDES)
    if forced_count:
        notes.append(
            f"{forced_count} of {len(forced)} tickets are routed by the gate's other rules whatever the threshold"
        )
    report = CalibrateReport(
        graph=str(options.graph),
        data=str(options.data),
        triage_model=f"{alias}: {spec.models[alias].backend} {backend.model}",
        reference=ref.described,
        tickets=len(keep),
        dropped=len(rows) - len(keep),
        split=split_summary(fraction, seed, len(train_rows), len(rows)),
        calibration_fraction=options.calibration_fraction,
        cost=cost,
        result=result,
        patch=_patch(result, loaded, spec.first_tier.name),
        notes=notes,
    )
    if options.plot_path is not None:
        _plot(report, options, calibration_part, held_out_part, economics)
    if options.write:
        _write(report, options.graph)
    if options.store is not None:
        record_reference(options.store, spec.name, spec.first_tier.name, [t.confidence for t in mini])
        report.notes.append(
            f"recorded the first tier's confidences on DATA in {options.store} as the drift reference"
        )
    return report


def _patch(result: cal.CalibrationResult, loaded: LoadedSpec, tier: str) -> str:
    """The fitted gate as the YAML to paste into the graph: under ``tier``, or the legacy top-level ``gate``."""
    from triagegate.tuning.gate_patch import snippet

    return snippet(
        result.policy.threshold, result.policy.category_thresholds, tier=None if loaded.legacy else tier
    )


def _plot(
    report: CalibrateReport,
    options: CalibrateOptions,
    calibration_part: cal.Tickets,
    held_out_part: cal.Tickets,
    economics: cal.Economics,
) -> None:
    from triagegate.tuning.plot import plot

    assert options.plot_path is not None
    result = report.result
    marks = {"fitted: single": cal.Policy(result.single.threshold)}
    if result.per_category is not None:
        marks["fitted: per category"] = cal.Policy(
            result.per_category.threshold, result.per_category.category_thresholds
        )
    plot(
        result,
        options.plot_path,
        held_out=cal.curve_rows(held_out_part, economics, points=101, marks=marks),
        calibration=cal.curve_rows(calibration_part, economics, points=101),
        title=f"{Path(options.graph).name} on {Path(options.data).name}: {result.description}",
    )
    report.plot = str(options.plot_path)


def _write(report: CalibrateReport, graph: Path) -> None:
    from triagegate.tuning.gate_patch import patch_file

    policy = report.result.policy
    if policy.feasible:
        patch_file(graph, policy.threshold, policy.category_thresholds)
        report.wrote = str(graph)
    else:
        report.notes.append(f"not writing {graph}: the objective is not met on the calibration tickets")


@dataclass(frozen=True)
class StoreCalibrateOptions:
    """``triagegate calibrate GRAPH --from-store STORE``: refit the first tier's thresholds on the
    shadow and human labels in the outcome store (see :func:`calibrate_from_store`)."""

    graph: Path
    store: str
    objective: cal.Objective
    since: float | None = None
    """Only outcomes written at or after this time (Unix seconds)."""
    graph_hash: str | None = None
    seed: int = 13
    calibration_fraction: float = 0.5
    per_category: bool = True
    min_support: int = cal.DEFAULT_MIN_SUPPORT
    resamples: int = cal.DEFAULT_RESAMPLES
    flagship_accuracy: float | None = None
    write: bool = False
    """Patch the graph as ``calibrate --write`` does, and record the store's confidences as the new reference."""


def calibrate_from_store(options: StoreCalibrateOptions) -> CalibrateReport:
    """Fit the first tier's thresholds on the store's labelled kept tickets and report them held out.

    The labelled predictions come from :func:`triagegate.tuning.monitoring.labelled_predictions`
    and go through the same fitting as :func:`calibrate`; costs per route are the means the store
    measured. With ``write``, the graph is patched when the objective is met, and the first tier's
    confidences in the window become the reference the report's drift is measured against.
    """
    from triagegate.cost import CostEstimate
    from triagegate.spec import load_spec
    from triagegate.store import read_store
    from triagegate.tuning.monitoring import labelled_predictions, tier_confidence, tier_costs

    loaded = load_spec(options.graph)
    spec = loaded.spec
    tier = spec.first_tier.name
    snapshot = read_store(options.store, since=options.since, graph_hash=options.graph_hash)
    scored = labelled_predictions(snapshot, tier)
    if len(scored) < 4:
        raise InputError(
            f"{options.store}: {len(scored)} labelled tickets kept by tier {tier!r}; need at least 4 "
            "(turn on gate.shadow, or add human labels, and let more tickets through)"
        )
    kept_usd, escalated_usd = tier_costs(snapshot, tier)
    notes = [
        "fitted on kept tickets only (their labels come from shadow runs and people), so thresholds can rise "
        "freely but fall only to the lowest confidence kept; coverage is the share of these labelled kept tickets"
    ]
    if kept_usd is None or escalated_usd is None:
        notes.append("no measured cost for one route in the store; it is taken as 0")
    cost = CostEstimate(
        kept_usd=kept_usd or 0.0,
        escalated_usd=escalated_usd or 0.0,
        basis=f"measured: mean cost of kept and of escalated tickets in {options.store}",
    )
    given = options.flagship_accuracy
    economics = cal.Economics.from_cost(
        cost,
        1.0 if given is None else given,
        "assumed 1.0: the stronger tier is the reference"
        if given is None
        else "given with --flagship-accuracy",
    )
    arrays = cal.Tickets.from_scored(scored)
    fitting, held = cal.split_indices(len(scored), options.calibration_fraction, options.seed)
    result = cal.calibrate(
        arrays.subset(fitting),
        arrays.subset(held),
        options.objective,
        economics,
        per_category=options.per_category,
        min_support=options.min_support,
        resamples=options.resamples,
        seed=options.seed,
    )
    sources = sorted({lab.source for lab in snapshot.labels})
    report = CalibrateReport(
        graph=str(options.graph),
        data=options.store,
        triage_model=f"{spec.first_tier.model} as the store recorded it",
        reference=f"labels in the outcome store ({', '.join(sources) or 'none'})",
        tickets=len(scored),
        calibration_fraction=options.calibration_fraction,
        cost=cost,
        result=result,
        patch=_patch(result, loaded, tier),
        notes=notes,
    )
    if options.write:
        _write(report, options.graph)
        if report.wrote is not None:
            live = [c for s in snapshot.outcomes if (c := tier_confidence(s.outcome, tier)) is not None]
            record_reference(options.store, spec.name, tier, live)
    return report


def record_reference(store: str, graph: str, tier: str, confidences: Sequence[float]) -> None:
    """Write ``tier``'s confidence histogram (:func:`~triagegate.tuning.monitoring.reference_histogram`)
    to the outcome store as the reference the report measures drift against."""
    from triagegate.store import open_store
    from triagegate.tuning.monitoring import reference_histogram

    reference = reference_histogram(graph, tier, confidences)

    async def put() -> None:
        async with open_store(store) as writer:
            await writer.put_reference(reference)

    asyncio.run(put())
