"""``triagegate eval``: measure a graph's triage tier and gate on labeled data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, percent, setup_logging, split_summary
from triagegate.cli.recording import RecordOpt, ReplayOpt
from triagegate.cli.train_cmd import DataArg, FitOnSplitOpt, LabelColOpt, SeedOpt, SplitOpt, TextColOpt

if TYPE_CHECKING:
    from triagegate.tuning.evaluation import EvalReport
    from triagegate.models.base import ModelBackend


@app.command("eval")
def eval_(
    graph: GraphArg,
    data: DataArg,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    split_fraction: SplitOpt = None,
    seed: SeedOpt = 13,
    fit: FitOnSplitOpt = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate at most N rows.")] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Tickets in flight at once (chat-model triage).")
    ] = 8,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the JSON report here.")] = None,
    as_json: JsonOpt = False,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Triage every row of DATA with GRAPH's triage model and report accuracy, the gate and the selective curve.

    The curve shows, for confidence thresholds from 0 up, the share of tickets the mini tier
    keeps, its accuracy on them and the estimated cost per 1,000 tickets. --split evaluates
    on the seeded test part of DATA (the same rows 'triagegate train --split' holds out);
    add --train to fit the classifier on the rest first.

    Example: triagegate eval graphs/support.yaml tickets.csv --train --split 0.2
    """
    import asyncio
    import os

    from triagegate.cli.recording import recorded, replayed
    from triagegate.tuning.datasets import DatasetError, load_labeled, split
    from triagegate.errors import InputError
    from triagegate.tuning.evaluation import build_report, estimate_costs
    from triagegate.pipeline import default_cache_dir
    from triagegate.tuning.scoring import (
        ScoredRun,
        fit_triage_classifier,
        prompt_overhead_chars,
        score_rows,
        triage_backend,
    )
    from triagegate.spec import load_spec

    setup_logging(log_level)
    if fit and not split_fraction:
        raise InputError("--train needs --split, or it would test on its own training rows")
    environ = dict(os.environ)
    loaded = replayed(load_spec(graph, environ=environ), replay, environ)
    spec = loaded.spec
    rows = load_labeled(data, text_col=text_col, label_col=label_col)
    categories = spec.taxonomy.category_names
    unknown = sorted({r.label for r in rows} - set(categories))
    if unknown:
        raise DatasetError(
            f"labels not in the graph's taxonomy: {', '.join(unknown)} (the taxonomy has: {', '.join(categories)})",
            file=data,
        )
    train_rows, test_rows = split(rows, split_fraction, seed) if split_fraction else ([], rows)
    if limit is not None:
        test_rows = test_rows[:limit]
    notes = []
    backend: ModelBackend
    if fit:
        alias, backend, note = fit_triage_classifier(spec, graph, data, train_rows)
        notes.append(note)
    else:
        alias, backend = triage_backend(loaded, environ=environ, cache_dir=default_cache_dir(environ))

    backend = recorded(alias, backend, record, loaded, environ)

    async def go() -> ScoredRun:
        try:
            return await score_rows(loaded, test_rows, backend, alias, concurrency=concurrency)
        finally:
            await backend.aclose()

    run = asyncio.run(go())
    cost = estimate_costs(
        spec,
        mean_text_chars=run.mean_text_chars,
        overhead_chars=prompt_overhead_chars(loaded),
        triage_drafts=backend.capabilities.chat,
        triage_is_model=backend.capabilities.chat,
    )
    if run.errors:
        notes.append(f"{len(run.errors)} triage call(s) failed, e.g. {run.errors[0]}")
    report = build_report(
        run.scored,
        graph=str(graph),
        data=str(data),
        triage_model=f"{alias}: {spec.models[alias].backend} {backend.model}",
        threshold=spec.gate.threshold,
        cost=cost,
        gate_kept=run.gate_kept,
        gate_reasons=dict(run.gate_reasons.most_common()),
        split=split_summary(split_fraction, seed, len(train_rows), len(test_rows)),
        trained_on_split=fit,
        triage_errors=len(run.errors),
        seconds=round(run.seconds, 4),
        triage_ms_per_ticket=round(run.ms_per_ticket, 4),
        notes=notes,
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        print_report(report)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def print_report(report: EvalReport, *, curve_rows: int = 12) -> None:
    """A readable summary: headline numbers, the graph's operating points and a thinned curve."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    split = report.split
    where = f", test part of split {split['fraction']} (seed {split['seed']})" if split else ""
    console.print(f"[bold]{report.tickets} tickets[/bold] from {report.data}{where}", highlight=False)
    console.print(f"graph {report.graph}, triage by {report.triage_model}", highlight=False)
    console.print(
        f"accuracy {percent(report.accuracy)}, macro-F1 {percent(report.macro_f1)}, "
        f"{report.triage_ms_per_ticket:.3f} ms per ticket ({report.seconds:.2f} s in all)"
    )
    points = Table(title="the graph's operating points: its threshold alone, and its whole gate")
    for column in ("", "threshold", "kept", "coverage", "accuracy kept", "accuracy escalated", "est. $ / 1k"):
        points.add_column(column, justify="left" if not column else "right")
    for name, p in (("threshold", report.at_threshold), ("gate", report.gate)):
        if p is None:
            continue
        threshold = "-" if p.threshold is None else f"{p.threshold:.3f}"
        points.add_row(
            name,
            threshold,
            str(p.kept),
            percent(p.coverage),
            percent(p.accuracy_kept),
            percent(p.accuracy_escalated),
            _usd(p.cost_per_1000),
        )
    console.print(points)
    curve = Table(title="selective curve (keep tickets with confidence >= threshold)")
    for column in ("threshold", "coverage", "accuracy kept", "est. $ / 1k"):
        curve.add_column(column, justify="right")
    step = max(1, len(report.curve) // curve_rows)
    shown = {id(p): p for p in [*report.curve[::step], *report.curve[-1:]]}
    shown.update({id(p): p for p in report.curve if p.threshold == report.threshold})
    for p in sorted(shown.values(), key=lambda p: p.threshold or 0.0):
        mark = " *" if p.threshold == report.threshold else ""
        curve.add_row(
            f"{p.threshold:.3f}{mark}", percent(p.coverage), percent(p.accuracy_kept), _usd(p.cost_per_1000)
        )
    console.print(curve)
    if report.gate_reasons:
        console.print("escalation reasons: " + ", ".join(f"{k} {v}" for k, v in report.gate_reasons.items()))
    if report.cost is not None:
        console.print(
            f"cost per ticket {_usd(report.cost.kept_usd)} kept, {_usd(report.cost.escalated_usd)} escalated ({report.cost.basis})"
        )
    for note in report.notes:
        console.print(f"note: {note}")
