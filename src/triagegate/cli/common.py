"""Helpers shared by subcommands: option types, logging setup, printing outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triagegate import environment

if TYPE_CHECKING:
    from triagegate.types import GateDecision, Outcome

GraphArg = Annotated[
    Path, typer.Argument(help="Graph file (YAML), e.g. graphs/support.yaml.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a summary.")]
LogLevelOpt = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        help="Log level for structured logs on stderr (default: TRIAGEGATE_LOG_LEVEL or WARNING).",
    ),
]

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=environment.STORE,
        help=f"Outcome store to write every Outcome to: a SQLite file or a postgresql:// URL (env {environment.STORE}).",
    ),
]


def setup_logging(level: str | None) -> None:
    """Configure logging for this CLI process (structlog and the standard library's root logger);
    the library itself never does, see :mod:`triagegate.log`."""
    from triagegate import log

    log.configure(level)


def print_outcome(outcome: Outcome, models: dict[str, str]) -> None:
    """A readable summary of one Outcome, saying plainly which models ran."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("ticket", outcome.ticket_id)
    table.add_row("status", outcome.status)
    table.add_row("route", f"{outcome.route} (the tier that answered)" if outcome.route != "none" else "none")
    if outcome.path:
        table.add_row("path", " -> ".join(outcome.path))
    for decision in outcome.decisions:
        table.add_row(escape(f"gate [{decision.tier}]"), escape(_decision_line(decision)))
    table.add_row(
        "category", f"{outcome.category} (priority {outcome.priority}, complexity {outcome.complexity})"
    )
    if outcome.confidence is not None:
        how = str(outcome.confidence_method)
        if outcome.confidence_fallback:
            from triagegate.confidence import FALLBACK_REASONS

            why = FALLBACK_REASONS.get(outcome.confidence_fallback, outcome.confidence_fallback)
            how = f"{how}, not logprobs: {why}"
        table.add_row("confidence", f"{outcome.confidence:.3f} ({how})")
    if outcome.escalation_reasons:
        table.add_row("escalated because", ", ".join(outcome.escalation_reasons))
    if outcome.sources:
        table.add_row("grounded in", escape(", ".join(outcome.sources)))
    for run in outcome.nodes:
        if run.model:
            detail = f"{run.model_alias}: {run.model} via {run.endpoint}, {run.input_tokens}+{run.output_tokens} tokens"
            table.add_row(
                escape(f"model [{run.node}]"),
                escape(f"{detail}, ${run.cost_usd:.6f}, {run.latency_ms:.0f} ms"),
            )
    table.add_row("cost", f"${outcome.cost_usd:.6f}")
    table.add_row("latency", f"{outcome.latency_ms:.0f} ms")
    for error in outcome.errors:
        table.add_row("error", error)
    if outcome.thread_id:
        table.add_row("thread", outcome.thread_id)
    handoff = outcome.handoff
    if handoff is not None:
        table.add_row("handed off because", ", ".join(handoff.reasons))
        if handoff.action:
            table.add_row("person", f"{handoff.action}" + (f" by {handoff.by}" if handoff.by else ""))
    console.print(table)
    if handoff is not None and handoff.draft and outcome.answer is None:
        console.print(
            f"\n[bold]draft[/bold] (from {handoff.draft_route}; triagegate handoff resume to answer)"
        )
        console.print(handoff.draft, markup=False, highlight=False)
    if handoff is not None and handoff.diff:
        console.print("\n[bold]edit against the draft[/bold]")
        console.print(handoff.diff, markup=False, highlight=False)
    if outcome.answer:
        console.print("\n[bold]answer[/bold]")
        console.print(outcome.answer, markup=False, highlight=False)


def _decision_line(decision: GateDecision) -> str:
    """One gate decision for people: ``escalate: low_confidence (0.412 < 0.8)``, ``skip (pre-gate): needs_vision``."""
    if decision.route == "skip":
        return f"skipped by the pre-gate: {', '.join(decision.reasons)}"
    line: str = decision.route
    if decision.reasons:
        line += f": {', '.join(decision.reasons)}"
    if decision.confidence is not None and decision.threshold is not None:
        compare = "<" if decision.confidence < decision.threshold else ">="
        line += f" (confidence {decision.confidence:.3f} {compare} threshold {decision.threshold})"
    return line


def percent(value: float | None) -> str:
    """A share as ``12.3%``, or ``-`` when there is none (no ticket kept, say)."""
    return "-" if value is None else f"{100 * value:.1f}%"
