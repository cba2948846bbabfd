"""``triagegate batch``: run a file of tickets through a graph, resumably, within limits and a budget."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triagegate import environment
from triagegate.cli import app
from triagegate.cli.common import GraphArg, setup_logging
from triagegate.cli.recording import RecordOpt, ReplayOpt

if TYPE_CHECKING:
    from triagegate.batch import BatchResult, BatchRunner
    from triagegate.batch.progress import Progress
    from triagegate.pipeline import Pipeline

EXIT_BUDGET = 3
EXIT_NO_SUCCESS = 4
"""This run wrote failed outcomes and not one ``ok``: a dead endpoint, a bad key, an unusable file."""
EXIT_INTERRUPTED = 130


@app.command()
def batch(
    graph: GraphArg,
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Tickets: a JSONL, CSV or TSV file, or - for standard input.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output file: one Outcome JSON per line, in completion order.",
            show_default=False,
        ),
    ],
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Ledger file (default: OUTPUT.ledger.sqlite beside the output)."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar=environment.STORE,
            help="Outcome store every Outcome is also written to, for 'triagegate report': a SQLite file or a "
            f"postgresql:// URL (env {environment.STORE}; default: OUTPUT.store.sqlite beside the output).",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto (by suffix, else sniffed), jsonl, csv or tsv.")
    ] = "auto",
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Most tickets in flight at once.")
    ] = 16,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Write at most N outcomes in this run, then stop.")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            min=0.0,
            help="Budget in USD for the whole batch (all runs recorded in the ledger); no new tickets start "
            "once the spend so far plus the estimate for those in flight would exceed it.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Run tickets whose recorded status is failed again. The new outcome replaces the old line: "
            "when the run completes the output is rewritten without superseded lines (until then, take the "
            "last line per ticket_id).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate the input and estimate tokens and cost; call no model."),
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the summary as JSON to this file.")
    ] = None,
    assume_escalation: Annotated[
        float,
        typer.Option(
            "--assume-escalation", min=0.0, max=1.0, help="Escalation rate assumed by cost estimates."
        ),
    ] = 0.2,
    allow_graph_change: Annotated[
        bool,
        typer.Option(
            "--allow-graph-change", help="Resume even though the graph hash differs from the ledger's."
        ),
    ] = False,
    progress_interval: Annotated[
        float,
        typer.Option(
            "--progress-interval", min=0.1, help="Seconds between progress lines when not on a terminal."
        ),
    ] = 10.0,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="Log level for structured logs on stderr (default: TRIAGEGATE_LOG_LEVEL or ERROR, since "
            "retries are routine in a batch and the summary reports failures).",
        ),
    ] = None,
) -> None:
    """Run every ticket in INPUT through GRAPH, writing one Outcome per row to OUTPUT.

    Re-running the same command after a crash, kill or Ctrl-C resumes: rows already in the
    output are skipped and each input row ends up in the output exactly once. Ctrl-C stops
    taking new tickets and finishes those in flight; a second Ctrl-C abandons them.
    Bad rows and duplicate ids get a failed or skipped outcome and the batch goes on. A row
    without an id is named by its content, so identical rows are one ticket (the repeat is
    skipped).

    Exit codes: 0 done (or --limit reached), 1 runtime failure, 2 usage or configuration
    error (including an unreadable or binary INPUT), 3 stopped by --max-cost, 4 no ticket
    succeeded (this run wrote failed outcomes and not one ok), 130 interrupted.

    Example: triagegate batch graphs/support.yaml tickets.jsonl -o outcomes.jsonl --concurrency 32
    """
    from triagegate.batch import BatchOptions, render_dry_run, render_summary
    from triagegate.batch import dry_run as run_dry
    from triagegate.batch.report import write_json

    setup_logging(log_level or os.environ.get(environment.LOG_LEVEL) or "ERROR")
    if str(output) == "-":
        raise typer.BadParameter(
            "the output must be a file: it is appended to and repaired on resume", param_hint="-o"
        )
    options = BatchOptions(
        input=source,
        output=output,
        state=state,
        store=store,
        format=fmt,
        concurrency=concurrency,
        limit=limit,
        max_cost=max_cost,
        retry_failed=retry_failed,
        allow_graph_change=allow_graph_change,
        assume_escalation=assume_escalation,
    )
    if dry_run:
        from triagegate.spec import load_spec

        summary = run_dry(load_spec(graph), options)
        typer.echo(render_dry_run(summary))
        if report is not None:
            write_json(report, summary)
        return

    import asyncio

    from triagegate.batch import BatchRunner
    from triagegate.batch.progress import make_progress
    from triagegate.pipeline import load

    pipeline = load(graph, record=record, replay=replay)
    progress = make_progress(sys.stderr, interval=progress_interval)
    runner = BatchRunner(pipeline, options, progress)
    result = asyncio.run(_run_with_signals(pipeline, runner, progress))
    typer.echo(render_summary(result.report))
    if report is not None:
        write_json(report, result.report)
    _exit_for(result)


async def _run_with_signals(pipeline: Pipeline, runner: BatchRunner, progress: Progress) -> BatchResult:
    """Run the batch with SIGINT/SIGTERM meaning "stop taking tickets", and a second one "abandon"."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            runner.request_stop()
            progress.message(
                f"stopping: no new tickets; finishing {runner.in_flight} in flight (press Ctrl-C again to abandon them)"
            )
        else:
            runner.abandon()
            progress.message("abandoning the tickets in flight; they run again on resume")

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        async with pipeline:
            return await runner.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _exit_for(result: BatchResult) -> None:
    import shlex

    again = shlex.join(["triagegate", *sys.argv[1:]])
    if result.state in ("interrupted", "abandoned"):
        print(
            f"interrupted; every finished ticket is recorded. To resume, run the same command again:\n  {again}",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.state == "budget":
        print(
            "stopped by --max-cost before spending more; raise it and run the same command to continue",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_BUDGET)
    status = result.report["run"]["by_status"]
    if status.get("failed", 0) and not status.get("ok", 0):
        print(
            f"no ticket succeeded: all {status['failed']} ticket(s) run failed (see 'problems' above); "
            "fix the cause and run the same command with --retry-failed",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_NO_SUCCESS)
