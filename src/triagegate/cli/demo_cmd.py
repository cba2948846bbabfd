"""``triagegate demo``: the shipped example tickets through a graph, offline, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triagegate import environment
from triagegate.cli import app
from triagegate.cli.common import LogLevelOpt, setup_logging


@app.command()
def demo(
    graph: Annotated[
        Path, typer.Argument(help="Graph file (YAML); the offline reference graph by default.")
    ] = Path("graphs/support.yaml"),
    tickets: Annotated[
        Path | None,
        typer.Option(
            help="JSONL file of tickets (default: examples/demo_tickets.jsonl beside the graph's folder)."
        ),
    ] = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run the demo tickets through GRAPH and print route, category, confidence, cost and latency.

    Models are loaded before the first ticket and timed separately. Exits 1 if any ticket failed.

    Example: triagegate demo
    """
    import asyncio
    import os

    from rich.console import Console

    from triagegate.demo import render, run_demo

    setup_logging(log_level or os.environ.get(environment.LOG_LEVEL) or "ERROR")
    run = asyncio.run(run_demo(graph, tickets))
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)
    render(run, console)
    if any(outcome.status != "ok" for outcome in run.outcomes):
        raise typer.Exit(1)
