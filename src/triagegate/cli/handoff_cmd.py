"""``triagegate handoff list|show|resume|export``: the tickets waiting for a person, and answering them.

Each command opens the graph's checkpoints (``--checkpoints``, else ``TRIAGEGATE_CHECKPOINTS``,
else the graph's SQLite file under the cache directory), the same place ``run``, ``serve``
and ``worker`` keep them, so a handoff a service paused can be answered from a shell.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, print_outcome, setup_logging

if TYPE_CHECKING:
    from triagegate.checkpoints import HandoffRecord
    from triagegate.pipeline import Pipeline

handoff_app = typer.Typer(
    help="List, show, answer and export the tickets handed to a person.", no_args_is_help=True
)
app.add_typer(handoff_app, name="handoff")

CheckpointsOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoints",
        help="Where handoffs are kept: a SQLite file or a postgresql:// DSN "
        "(default: TRIAGEGATE_CHECKPOINTS, else the graph's file under the cache directory).",
    ),
]
ThreadArg = Annotated[
    str, typer.Argument(help="The handoff's thread id (Outcome.thread_id).", show_default=False)
]


def _with_pipeline(graph: Path, checkpoints: str | None, work: Any) -> Any:
    """Run ``await work(pipeline)`` on a pipeline loaded for ``graph`` and close it."""
    import asyncio

    from triagegate.pipeline import load

    pipeline = load(graph, checkpoints=checkpoints)

    async def go() -> Any:
        async with pipeline:
            return await work(pipeline)

    return asyncio.run(go())


def _line(record: HandoffRecord) -> str:
    handoff = record.outcome.handoff
    reasons = ", ".join(handoff.reasons) if handoff else ""
    return f"{record.thread_id}\t{record.status}\t{record.ticket_id}\t{record.outcome.category}\t{reasons}"


@handoff_app.command("list")
def list_handoffs(
    graph: GraphArg,
    status: Annotated[
        str, typer.Option(help="pending, resolving, resolved or all.", show_default=True)
    ] = "pending",
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    checkpoints: CheckpointsOpt = None,
    as_json: JsonOpt = False,
    log_level: LogLevelOpt = None,
) -> None:
    """List the handoffs of GRAPH, oldest first: thread, status, ticket, category and reasons."""
    from triagegate.errors import InputError

    setup_logging(log_level)
    if status not in ("pending", "resolving", "resolved", "all"):
        raise InputError(f"--status {status!r}: use pending, resolving, resolved or all")

    async def work(pipeline: Pipeline) -> list[HandoffRecord]:
        return await pipeline.handoffs(None if status == "all" else status, limit=limit)  # type: ignore[arg-type]

    records: list[HandoffRecord] = _with_pipeline(graph, checkpoints, work)
    if as_json:
        for record in records:
            sys.stdout.write(record.model_dump_json() + "\n")
        return
    for record in records:
        typer.echo(_line(record))
    typer.echo(f"{len(records)} handoff(s)", err=True)


@handoff_app.command("show")
def show(
    graph: GraphArg,
    thread: ThreadArg,
    checkpoints: CheckpointsOpt = None,
    as_json: JsonOpt = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Show one handoff: the ticket's Outcome, why it was handed off, and the draft to approve or edit."""
    setup_logging(log_level)

    async def work(pipeline: Pipeline) -> HandoffRecord:
        return await pipeline.handoff(thread)

    record: HandoffRecord = _with_pipeline(graph, checkpoints, work)
    if as_json:
        sys.stdout.write(record.model_dump_json() + "\n")
        return
    typer.echo(f"thread {record.thread_id}: {record.status}")
    print_outcome(record.outcome, {})


@handoff_app.command("resume")
def resume(
    graph: GraphArg,
    thread: ThreadArg,
    approve: Annotated[bool, typer.Option("--approve", help="Send the draft as it is.")] = False,
    edit: Annotated[
        str | None, typer.Option("--edit", help="Send this edited draft (- reads stdin).")
    ] = None,
    answer: Annotated[
        str | None, typer.Option("--answer", help="Send this answer instead (- reads stdin).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who answered (kept in the Outcome).")] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="File the ticket under this category instead.")
    ] = None,
    checkpoints: CheckpointsOpt = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", help="Queue the answer on this Redis for the workers to apply, instead."),
    ] = None,
    stream: Annotated[str, typer.Option(help="The workers' stream (with --redis).")] = "triagegate:tickets",
    as_json: JsonOpt = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Answer a handoff and finish its ticket: exactly one of --approve, --edit TEXT or --answer TEXT.

    Exit 1 when the handoff is unknown or was answered already (nothing changes then). With
    --redis the answer is pushed to the workers' stream and a worker applies it.
    """
    from triagegate.errors import InputError
    from triagegate.types import HumanAction, HumanAnswer, Outcome

    setup_logging(log_level)
    chosen = [
        (name, value)
        for name, value in (("approve", approve or None), ("edit", edit), ("answer", answer))
        if value
    ]
    if len(chosen) != 1:
        raise InputError("give exactly one of --approve, --edit TEXT or --answer TEXT")
    name, value = chosen[0]
    action: HumanAction = name  # type: ignore[assignment]
    text = None if action == "approve" else (sys.stdin.read() if value == "-" else str(value))

    if redis_url is not None:
        from pydantic import ValidationError

        try:
            queued = HumanAnswer(action=action, text=text, by=by, category=category)
        except ValidationError as exc:
            raise InputError(
                f"invalid answer: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
            ) from None
        _enqueue_resume(redis_url, stream, thread, queued)
        return

    async def work(pipeline: Pipeline) -> Outcome:
        return await pipeline.resume(thread, action, text, by=by, category=category)

    outcome: Outcome = _with_pipeline(graph, checkpoints, work)
    if as_json:
        sys.stdout.write(outcome.model_dump_json() + "\n")
    else:
        print_outcome(outcome, {})


def _enqueue_resume(redis_url: str, stream: str, thread: str, answer: Any) -> None:
    import asyncio

    from triagegate.queue.redis_stream import TicketStream, connect

    async def go() -> str:
        client = connect(redis_url)
        try:
            return await TicketStream(client, stream).add_resume(thread, answer)
        finally:
            await client.aclose()

    entry = asyncio.run(go())
    typer.echo(json.dumps({"stream": stream, "thread_id": thread, "entry": entry}))


@handoff_app.command("export")
def export(
    graph: GraphArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="JSONL file to write (- for stdout).")],
    checkpoints: CheckpointsOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Write the answered handoffs as labelled data (JSONL: text, category, answer, ...).

    ``train`` and ``calibrate`` read the file as it is (``text`` and ``category`` columns): a
    person's answers, with the category they gave or confirmed, become training and
    calibration data.
    """
    from triagegate.tuning.human_labels import export_labels

    setup_logging(log_level)

    async def work(pipeline: Pipeline) -> int:
        if str(output) == "-":
            return await export_labels(pipeline, sys.stdout)
        with output.open("w", encoding="utf-8") as sink:
            return await export_labels(pipeline, sink)

    count: int = _with_pipeline(graph, checkpoints, work)
    typer.echo(json.dumps({"written": count, "output": str(output)}), err=True)
