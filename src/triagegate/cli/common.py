"""Helpers shared by subcommands: option types, logging setup, printing outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from triagegate.types import Outcome

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


def setup_logging(level: str | None) -> None:
    """Configure logging for this CLI process (structlog and the standard library's root logger);
    the library itself never does, see :mod:`triagegate.log`."""
    from triagegate import log

    log.configure(level)


def print_outcome(outcome: Outcome, models: dict[str, str]) -> None:
    """A readable summary of one Outcome, saying plainly which models ran."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    route = {"mini": "mini (answered by the triage tier)", "flagship": "flagship (escalated)"}.get(
        outcome.route, outcome.route
    )
    table.add_row("ticket", outcome.ticket_id)
    table.add_row("status", outcome.status)
    table.add_row("route", route)
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
    for run in outcome.nodes:
        if run.model:
            detail = f"{run.model_alias}: {run.model} via {run.endpoint}, {run.input_tokens}+{run.output_tokens} tokens"
            table.add_row(f"model [{run.node}]", f"{detail}, ${run.cost_usd:.6f}, {run.latency_ms:.0f} ms")
    table.add_row("cost", f"${outcome.cost_usd:.6f}")
    table.add_row("latency", f"{outcome.latency_ms:.0f} ms")
    for error in outcome.errors:
        table.add_row("error", error)
    console.print(table)
    if outcome.answer:
        console.print("\n[bold]answer[/bold]")
        console.print(outcome.answer, markup=False, highlight=False)


def percent(value: float | None) -> str:
    """A share as ``12.3%``, or ``-`` when there is none (no ticket kept, say)."""
    return "-" if value is None else f"{100 * value:.1f}%"
