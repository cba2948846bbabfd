"""``triagegate calibrate``: fit the gate's thresholds to an objective on labeled (or flagship-labeled) data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, percent, setup_logging
from triagegate.cli.eval_cmd import data_options, emit
from triagegate.cli.recording import RecordOpt, ReplayOpt
from triagegate.cli.train_cmd import FitOnSplitOpt, LabelColOpt, SeedOpt, SplitOpt, TextColOpt

if TYPE_CHECKING:
    from rich.console import Console

    from triagegate.tuning.calibrate import Reference
    from triagegate.tuning.calibration import Objective, OperatingPoint
    from triagegate.tuning.cascade import CascadeObjective
    from triagegate.tuning.cascade_tuning import CascadeReport
    from triagegate.tuning.report import CalibrateReport


@app.command()
def calibrate(
    graph: GraphArg,
    data: Annotated[
        Path | None,
        typer.Argument(help="Labeled data: CSV, TSV or JSONL (not with --from-store).", show_default=False),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            "--target-accuracy", min=0.0, max=1.0, help="Most coverage whose kept tickets are this accurate."
        ),
    ] = None,
    max_escalation: Annotated[
        float | None,
        typer.Option(
            "--max-escalation", min=0.0, max=1.0, help="Best kept accuracy escalating at most this share."
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            min=0.0,
            help="Best overall accuracy within this many USD per 1,000 tickets (estimated); with --cascade, "
            "a bound on the cost of the cascade.",
        ),
    ] = None,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="Fit every tier's threshold: the cheapest cascade meeting --target-accuracy on its answers "
            "(with --max-last-share and --budget as bounds).",
        ),
    ] = False,
    max_last_share: Annotated[
        float | None,
        typer.Option(
            "--max-last-share",
            min=0.0,
            max=1.0,
            help="With --cascade: at most this share of tickets reaches the last tier.",
        ),
    ] = None,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    split_fraction: SplitOpt = None,
    seed: SeedOpt = 13,
    fit: FitOnSplitOpt = False,
    calibration_fraction: Annotated[
        float,
        typer.Option(
            "--calibration-fraction",
            min=0.01,
            max=0.99,
            help="Share of the evaluated rows the thresholds are fitted on (seeded); the rest is held out.",
        ),
    ] = 0.5,
    per_category: Annotated[
        bool,
        typer.Option(
            "--per-category/--no-per-category", help="Also fit a threshold per well-supported category."
        ),
    ] = True,
    min_support: Annotated[
        int,
        typer.Option(
            "--min-support", min=1, help="Calibration tickets a category needs for its own threshold."
        ),
    ] = 30,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="labels (DATA's label column) or flagship (the flagship's triage of each ticket, live or "
            "replayed). Default: labels, or flagship when DATA has no label column.",
        ),
    ] = None,
    flagship_accuracy: Annotated[
        float | None,
        typer.Option(
            "--flagship-accuracy",
            min=0.0,
            max=1.0,
            help="How often the flagship is right on an escalated ticket (default: measured from a --replay "
            "recording of flagship triage when it has some, else assumed 1.0).",
        ),
    ] = None,
    sample: Annotated[
        int | None, typer.Option("--sample", min=2, help="Use a seeded sample of N evaluated rows.")
    ] = None,
    resamples: Annotated[
        int, typer.Option("--resamples", min=1, help="Bootstrap resamples for the held-out intervals.")
    ] = 1000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Tickets in flight at once (chat-model triage).")
    ] = 8,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    write: Annotated[
        bool, typer.Option("--write", help="Patch GRAPH's gate thresholds in place (comments kept).")
    ] = False,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Draw the curves to this PNG (needs matplotlib).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the JSON report here.")] = None,
    as_json: JsonOpt = False,
    log_level: LogLevelOpt = None,
    from_store: Annotated[
        str | None,
        typer.Option(
            "--from-store",
            help="Fit on the shadow and human labels in this outcome store instead of DATA "
            "(with --write, also records the store's confidences as the drift reference).",
        ),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="With --from-store: outcomes of the last 24h, 7d, ... or 'all'.")
    ] = "all",
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Record the first tier's confidences on DATA in this outcome store (drift reference).",
        ),
    ] = None,
) -> None:
    """Fit GRAPH's gate thresholds on DATA to one objective and report them on held-out rows.

    Give exactly one objective. The evaluated rows (all of DATA, or the test part of --split)
    are triaged by the graph's mini tier, split (seeded) into a calibration part, where the
    thresholds are fitted, and a held-out part, where coverage and kept accuracy are
    reported with bootstrap intervals. Without --write the YAML to paste is printed.

    With --cascade every tier triages every row once and every gated tier's threshold is
    fitted: the cheapest cascade whose answers are --target-accuracy accurate, optionally
    with at most --max-last-share of tickets reaching the last tier and within --budget.

    Example: triagegate calibrate graphs/support.yaml tickets.csv --target-accuracy 0.98 --plot curve.png
    """
    import time

    from triagegate.tuning.calibrate import CalibrateOptions, calibrate

    started = time.perf_counter()
    setup_logging(log_level)
    if from_store is not None:
        if cascade or max_last_share is not None:
            from triagegate.errors import InputError

            raise InputError("--cascade fits every tier on DATA's rows; it does not read --from-store")
        report = _from_store(
            graph,
            from_store,
            since,
            _objective(target_accuracy, max_escalation, budget),
            seed,
            calibration_fraction,
            per_category,
            min_support,
            resamples,
            flagship_accuracy,
            write,
        )
        _finish(report, started, output, as_json, write)
        return
    if data is None:
        raise typer.BadParameter("give DATA, or --from-store STORE", param_hint="DATA")
    common = data_options(
        graph, data, text_col, label_col, split_fraction, seed, fit, concurrency, record, replay
    )
    common.update(calibration_fraction=calibration_fraction, sample=sample, write=write)
    if cascade or max_last_share is not None:
        from triagegate.tuning.cascade_tuning import CascadeOptions, calibrate_cascade

        objective = _cascade_objective(cascade, target_accuracy, max_escalation, max_last_share, budget)
        cascade_report = calibrate_cascade(CascadeOptions(objective=objective, **common))
        cascade_report.seconds = round(time.perf_counter() - started, 3)
        emit(cascade_report, output, as_json, print_cascade_report)
        if write and cascade_report.wrote is None:
            raise typer.Exit(1)
        return
    options = CalibrateOptions(
        objective=_objective(target_accuracy, max_escalation, budget),
        per_category=per_category,
        min_support=min_support,
        reference=_reference(reference),
        flagship_accuracy=flagship_accuracy,
        resamples=resamples,
        plot_path=plot_path,
        store=store,
        **common,
    )
    _finish(calibrate(options), started, output, as_json, write)


def _finish(report: CalibrateReport, started: float, output: Path | None, as_json: bool, write: bool) -> None:
    import time

    report.seconds = round(time.perf_counter() - started, 3)
    emit(report, output, as_json, print_report)
    if write and report.wrote is None:
        raise typer.Exit(1)


def _from_store(
    graph: Path,
    store: str,
    since: str,
    objective: Objective,
    seed: int,
    calibration_fraction: float,
    per_category: bool,
    min_support: int,
    resamples: int,
    flagship_accuracy: float | None,
    write: bool,
) -> CalibrateReport:
    import time

    from triagegate.cli.report_cmd import parse_since
    from triagegate.tuning.calibrate import StoreCalibrateOptions, calibrate_from_store

    window = parse_since(since)
    return calibrate_from_store(
        StoreCalibrateOptions(
            graph=graph,
            store=store,
            objective=objective,
            since=None if window is None else time.time() - window,
            seed=seed,
            calibration_fraction=calibration_fraction,
            per_category=per_category,
            min_support=min_support,
            resamples=resamples,
            flagship_accuracy=flagship_accuracy,
            write=write,
        )
    )


def _objective(target: float | None, escalation: float | None, budget: float | None) -> Objective:
    from triagegate.errors import InputError
    from triagegate.tuning.calibration import Objective

    given = []
    if target is not None:
        given.append(Objective("target_accuracy", target))
    if escalation is not None:
        given.append(Objective("max_escalation", escalation))
    if budget is not None:
        given.append(Objective("budget", budget))
    if len(given) != 1:
        raise InputError("give exactly one objective: --target-accuracy, --max-escalation or --budget")
    return given[0]


def _cascade_objective(
    cascade: bool,
    target: float | None,
    escalation: float | None,
    max_last_share: float | None,
    budget: float | None,
) -> CascadeObjective:
    from triagegate.errors import InputError
    from triagegate.tuning.cascade import CascadeObjective

    if not cascade:
        raise InputError("--max-last-share bounds a cascade fit: add --cascade")
    if target is None:
        raise InputError("--cascade needs --target-accuracy (the accuracy of the cascade's answers)")
    if escalation is not None:
        raise InputError(
            "--cascade bounds the share reaching the last tier with --max-last-share, not --max-escalation"
        )
    return CascadeObjective(target_accuracy=target, max_last_share=max_last_share, budget=budget)


def print_cascade_report(report: CascadeReport) -> None:
    """The chosen thresholds on both parts, the graph's and the last tier alone, the curve, each tier's curve."""
    from rich.console import Console

    from triagegate.cli.eval_cmd import cascade_table, tier_curve_tables

    console = Console()
    fit = report.fit
    console.print(
        f"[bold]{report.tickets} tickets[/bold] from {report.data}: {report.calibration_tickets} to fit, "
        f"{report.held_out_tickets} held out (seed {report.seed})",
        highlight=False,
    )
    for name, model in report.models.items():
        console.print(f"tier {name}: {model}", highlight=False)
    met = "met" if fit.feasible else "NOT met"
    console.print(
        f"objective: {fit.description} ({met} on the calibration part, "
        f"{'met' if report.feasible_held_out else 'not met'} on the held-out part; "
        f"{fit.combinations} combinations in {report.fit_seconds:.2f} s)",
        highlight=False,
    )
    console.print(
        cascade_table(
            "chosen thresholds, the graph's, and the last tier alone",
            [
                ("chosen: calibration", fit.fitted),
                ("chosen: held out", report.held_out),
                ("graph: held out", report.at_graph),
                ("last tier alone: held out", report.last_alone),
            ],
        )
    )
    console.print(
        cascade_table(
            "the cascade's curve (cheapest for its accuracy on the calibration part), held out",
            [("", row.held_out) for row in report.curve],
        )
    )
    for table in tier_curve_tables(report.tier_curves):
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    _print_patch(console, report.wrote, report.patch)


def _print_patch(console: Console, wrote: str | None, patch: str) -> None:
    if wrote:
        console.print(f"patched {wrote}:", highlight=False)
    else:
        console.print("set these in the graph file (or run again with --write):", highlight=False)
    console.print(patch.rstrip("\n"), markup=False, highlight=False)


def _reference(value: str | None) -> Reference | None:
    from triagegate.errors import InputError

    if value is None:
        return None
    if value not in ("labels", "flagship"):
        raise InputError(f"--reference must be 'labels' or 'flagship', got {value!r}")
    return "labels" if value == "labels" else "flagship"


def _ci(point: OperatingPoint, field: Literal["coverage", "accuracy_kept"]) -> str:
    value = getattr(point, field)
    interval = point.coverage_ci if field == "coverage" else point.accuracy_kept_ci
    if interval is None:
        return percent(value)
    return f"{percent(value)} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def print_report(report: CalibrateReport) -> None:
    """The fitted policies, the held-out curve with its end points, and the patch."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = report.result
    split = report.split
    where = f" (test part of split {split['fraction']}, seed {split['seed']})" if split else ""
    console.print(
        f"[bold]{report.tickets} tickets[/bold] from {report.data}{where}: {r.calibration_tickets} to fit, "
        f"{r.held_out_tickets} held out (seed {r.seed})",
        highlight=False,
    )
    console.print(f"triage by {report.triage_model}; reference labels: {report.reference}", highlight=False)
    console.print(f"objective: {r.description}", highlight=False)
    console.print(
        f"estimated ${r.kept_usd:.6f} per kept ticket, ${r.escalated_usd:.6f} per escalated ticket; "
        f"flagship accuracy {r.flagship_accuracy:.3f} ({r.flagship_accuracy_source})",
        highlight=False,
    )
    policies = Table(
        title=f"fitted on the calibration part, reported on the held-out part (95% bootstrap interval, {r.resamples} resamples)"
    )
    for column in (
        "policy",
        "threshold",
        "fit: cover / acc.",
        "held-out coverage",
        "held-out kept acc.",
        "overall acc.",
        "$ / 1k",
    ):
        policies.add_column(column, justify="left" if column == "policy" else "right")
    fitted = [("single threshold", r.single)]
    if r.per_category is not None:
        fitted.append(("per category", r.per_category))
    for name, fp in fitted:
        label = (
            name + (" (chosen)" if fp is r.policy else "") + ("" if fp.feasible else " (misses objective)")
        )
        own = f" + {len(fp.category_thresholds)} own" if fp.category_thresholds else ""
        policies.add_row(
            label,
            f"{fp.threshold:g}{own}",
            f"{percent(fp.calibration.coverage)} / {percent(fp.calibration.accuracy_kept)}",
            _ci(fp.held_out, "coverage"),
            _ci(fp.held_out, "accuracy_kept"),
            percent(fp.held_out.system_accuracy),
            f"${fp.held_out.cost_per_1000:.4f}",
        )
    console.print(policies)
    if r.iso_accuracy is not None:
        iso = r.iso_accuracy
        console.print(
            f"at the same held-out kept accuracy ({percent(iso.accuracy_kept)}), per-category thresholds keep "
            f"{percent(iso.per_category_coverage)} and the best single threshold {percent(iso.single_coverage)} "
            f"(read off the held-out curve, which favours it): {100 * iso.coverage_gain:+.1f} points of coverage; "
            f"at the same coverage a single threshold keeps {percent(iso.single_accuracy_at_coverage)} accurate",
            highlight=False,
        )
    cv = r.cross_validation
    if cv is not None:
        console.print(
            f"out of fold ({cv.folds} folds of the calibration part, used to choose): single threshold keeps "
            f"{percent(cv.single.coverage)} at {percent(cv.single.accuracy_kept)}, per category "
            f"{percent(cv.per_category.coverage)} at {percent(cv.per_category.accuracy_kept)}",
            highlight=False,
        )
    curve = Table(title="held-out curve: one threshold for all, the chosen policies, and the end points")
    for column in ("", "threshold", "coverage", "kept acc.", "overall acc.", "est. $ / 1k"):
        curve.add_column(column, justify="left" if not column else "right")
    for row in r.curve:
        p = row.point
        curve.add_row(
            row.label,
            "-" if row.threshold is None else f"{row.threshold:.4g}",
            percent(p.coverage),
            percent(p.accuracy_kept),
            percent(p.system_accuracy),
            f"${p.cost_per_1000:.4f}",
        )
    console.print(curve)
    with_own = [c for c in r.categories if c.threshold is not None]
    if with_own:
        table = Table(title=f"categories with their own threshold (>= {r.min_support} calibration tickets)")
        for column in ("category", "support", "threshold"):
            table.add_column(column, justify="left" if column == "category" else "right")
        for c in with_own:
            table.add_row(c.name, str(c.support), f"{c.threshold:g}")
        console.print(table)
    for note in [*r.notes, *report.notes]:
        console.print(f"note: {note}", highlight=False)
    if report.plot:
        console.print(f"wrote the curves to {report.plot}", highlight=False)
    _print_patch(console, report.wrote, report.patch)
