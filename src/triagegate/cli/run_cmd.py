"""``triagegate run``: one ticket through a graph."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, print_outcome, setup_logging
from triagegate.cli.recording import RecordOpt, ReplayOpt


@app.command()
def run(
    graph: GraphArg,
    text: Annotated[str, typer.Argument(help="The ticket text, or - to read it from standard input.")],
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="Attach an image (path, http(s) URL or data URL); repeatable."),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="Ticket subject line.")] = None,
    ticket_id: Annotated[str | None, typer.Option("--id", help="Ticket id (default: a random one).")] = None,
    thread: Annotated[
        str | None, typer.Option("--thread", help="Continue (or start) this conversation thread.")
    ] = None,
    as_json: JsonOpt = False,
    record: RecordOpt = None,
    replay: ReplayOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run one ticket through GRAPH and print the route, category, confidence, answer and cost.

    Example: triagegate run graphs/support.yaml "I was charged twice this month"
    """
    import asyncio

    from triagegate.pipeline import load
    from triagegate.types import Attachment, Ticket

    setup_logging(log_level)
    if text == "-":
        text = sys.stdin.read()
    fields: dict[str, object] = {"text": text, "subject": subject}
    if ticket_id:
        fields["id"] = ticket_id
    if thread:
        fields["thread_id"] = thread
    fields["attachments"] = [Attachment.image(i) for i in image or []]
    from triagegate.pipeline import as_ticket

    ticket: Ticket = as_ticket(fields)
    pipeline = load(Path(graph), record=record, replay=replay)

    async def go() -> object:
        async with pipeline:
            return await pipeline.run(ticket)

    outcome = asyncio.run(go())
    from triagegate.types import Outcome

    assert isinstance(outcome, Outcome)
    if as_json:
        sys.stdout.write(outcome.model_dump_json() + "\n")
    else:
        print_outcome(outcome, pipeline.describe_models())
    if outcome.status not in ("ok", "awaiting_human"):
        raise typer.Exit(1)
