"""``triagegate eval``: measure a graph's triage tier and gate on labeled data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, percent, setup_logging
from triagegate.cli.recording import RecordOpt, ReplayOpt
from triagegate.cli.train_cmd import DataArg, FitOnSplitOpt, LabelColOpt, SeedOpt, SplitOpt, TextColOpt

if TYPE_CHECKING:
    from triagegate.tuning.cascade import CascadePoint, TierCurve
    from triagegate.tuning.cascade_tuning import CascadeEvalReport
    from triagegate.tuning.evaluation import EvalReport

R = TypeVar("R", bound=BaseModel)

CascadeOpt = Annotated[
    bool,
    typer.Option(
        "--cascade",
        help="Measure every tier: each triages every row once, and the cascade is replayed at the thresholds.",
    ),
]


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
    cascade: CascadeOpt = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Triage every row of DATA with GRAPH's triage model and report accuracy, the gate and the selective curve.

    The curve shows, for confidence thresholds from 0 up, the share of tickets the mini tier
    keeps, its accuracy on them and the estimated cost per 1,000 tickets. --split evaluates
    on the seeded test part of DATA (the same rows 'triagegate train --split' holds out);
    add --train to fit the classifier on the rest first.

    With --cascade every tier triages every row once, and the cascade is replayed at the
    graph's thresholds: share reaching and answered by each tier, accuracy, estimated cost
    per 1,000 tickets against the last tier alone, and each tier's selective curve among the
    tickets that reach it.

    Example: triagegate eval graphs/support.yaml tickets.csv --train --split 0.2
    """
    from triagegate.tuning.scoring import EvalOptions, evaluate

    setup_logging(log_level)
    common = data_options(
        graph, data, text_col, label_col, split_fraction, seed, fit, concurrency, record, replay
    )
    common["limit"] = limit
    if cascade:
        from triagegate.tuning.cascade_tuning import CascadeOptions, evaluate_cascade

        emit(evaluate_cascade(CascadeOptions(**common)), output, as_json, print_cascade_eval)
        return
    emit(evaluate(EvalOptions(**common)), output, as_json, print_report)


def data_options(
    graph: Path,
    data: Path,
    text_col: str | None,
    label_col: str | None,
    split_fraction: float | None,
    seed: int,
    fit: bool,
    concurrency: int,
    record: Path | None,
    replay: Path | None,
) -> dict[str, Any]:
    """The options eval and calibrate (and their ``--cascade`` forms) share, by field name."""
    return {
        "graph": graph,
        "data": data,
        "text_col": text_col,
        "label_col": label_col,
        "split_fraction": split_fraction,
        "seed": seed,
        "fit": fit,
        "concurrency": concurrency,
        "record": record,
        "replay": replay,
    }


def emit(report: R, output: Path | None, as_json: bool, show: Callable[[R], None]) -> None:
    """Write ``report`` to ``output`` (if given) as indented JSON, and print it as JSON or with ``show``."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        show(report)


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


def cascade_table(title: str, points: list[tuple[str, CascadePoint]]) -> object:
    """A table of cascade operating points: accuracy, cost, and each tier's share reached / answered."""
    from rich.table import Table

    table = Table(title=title)
    tiers = [t.name for t in max((p.tiers for _, p in points), key=len)] if points else []
    for column in (
        "",
        "thresholds",
        "accuracy",
        "est. $ / 1k",
        *(f"{t}: reached / answered (acc.)" for t in tiers),
    ):
        table.add_column(column, justify="left" if not column else "right")
    for label, p in points:
        by_name = {t.name: t for t in p.tiers}
        cells = []
        for name in tiers:
            t = by_name.get(name)
            cells.append(
                "-" if t is None else f"{percent(t.reached)} / {percent(t.answered)} ({percent(t.accuracy)})"
            )
        thresholds = ", ".join(f"{v:g}" for v in p.thresholds.values()) or "-"
        table.add_row(label, thresholds, percent(p.accuracy), _usd(p.cost_per_1000), *cells)
    return table


def tier_curve_tables(curves: list[TierCurve]) -> list[object]:
    """One table per gated tier: its selective curve among the tickets that reach it."""
    from rich.table import Table

    out: list[object] = []
    for c in curves:
        table = Table(
            title=f"tier {c.name}: {c.reached} tickets reach it; keep those with confidence >= threshold"
        )
        for column in ("threshold", "kept", "coverage", "accuracy kept", "accuracy escalated"):
            table.add_column(column, justify="right")
        for p in c.curve:
            mark = " *" if p.threshold == c.threshold else ""
            table.add_row(
                f"{p.threshold:.3f}{mark}",
                str(p.kept),
                percent(p.coverage),
                percent(p.accuracy_kept),
                percent(p.accuracy_escalated),
            )
        out.append(table)
    return out


def print_cascade_eval(report: CascadeEvalReport) -> None:
    from rich.console import Console

    console = Console()
    split = report.split
    where = f", test part of split {split['fraction']} (seed {split['seed']})" if split else ""
    console.print(f"[bold]{report.tickets} tickets[/bold] from {report.data}{where}", highlight=False)
    for name, model in report.models.items():
        console.print(f"tier {name}: {model}", highlight=False)
    console.print(
        cascade_table(
            "the cascade at the graph's thresholds, and the last tier alone",
            [("graph", report.at_graph), ("last tier alone", report.last_alone)],
        )
    )
    for table in tier_curve_tables(report.tier_curves):
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
