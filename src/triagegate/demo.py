"""The demo: a handful of varied tickets through a graph, offline, with a table of what happened.

The tickets ship in ``examples/demo_tickets.jsonl`` (an easy billing question, an ambiguous
one, an off-topic one, an injection attempt and one with a screenshot, which must escalate).
Models are built and loaded before the first ticket and timed apart from the tickets, so
the report separates the one-off start-up cost from the per-ticket cost. The line naming
the models is derived from the backends actually built, so an environment override that
binds a hosted API is reported as network use, never as offline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triagegate.errors import InputError
from triagegate.types import Outcome, Ticket

if TYPE_CHECKING:
    from rich.console import Console

    from triagegate.pipeline import Pipeline

DEFAULT_GRAPH = Path("graphs/support.yaml")
LOCAL_BACKENDS = frozenset({"classifier", "llamacpp", "scripted", "replay"})
"""Backends that never open a network connection."""


OFFLINE_NOTE = (
    "The offline models are small stand-ins, chosen to run anywhere with nothing downloaded: they show "
    "the routing, not the answers a hosted flagship writes. Bind real models with TRIAGEGATE_<ALIAS> "
    '(README, "Against OpenAI or any OpenAI-compatible server").'
)
"""Printed under an offline run's summary, so its answers are read as what they are."""


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What the demo measured: one Outcome per ticket and where the time went."""

    tickets: list[Ticket]
    outcomes: list[Outcome]
    load_seconds: float
    """Building the pipeline and loading (or fitting) every model, before any ticket."""
    ticket_seconds: float
    """Wall time for all tickets, run one after another."""
    offline: bool
    models_line: str


def default_tickets(graph: Path) -> Path:
    """``examples/demo_tickets.jsonl`` beside the folder that holds the graph file."""
    return graph.resolve().parent.parent / "examples" / "demo_tickets.jsonl"


def load_tickets(path: Path) -> list[Ticket]:
    """Read a JSONL file of tickets; relative attachment paths are taken relative to the file.

    Raises :class:`InputError` naming the file and line of the first bad row.
    """
    from triagegate.pipeline import as_ticket

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read demo tickets {path}: {exc.strerror or exc}") from None
    tickets = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise InputError("a row must be a JSON object")
            for attachment in row.get("attachments") or []:
                if isinstance(attachment, dict) and isinstance(attachment.get("path"), str):
                    attachment["path"] = str(path.parent / attachment["path"])
            tickets.append(as_ticket(row))
        except (json.JSONDecodeError, InputError) as exc:
            raise InputError(f"{path}:{number}: {exc}") from None
    if not tickets:
        raise InputError(f"{path} holds no tickets")
    return tickets


async def warm_up(pipeline: Pipeline) -> None:
    """Load every model the pipeline will call, so the first ticket does not pay for it."""
    from triagegate.models.classifier import ClassifierBackend
    from triagegate.models.llamacpp import LlamaCppBackend

    seen: set[int] = set()
    for backend in pipeline.backends.values():
        if id(backend) in seen:
            continue
        seen.add(id(backend))
        if isinstance(backend, LlamaCppBackend):
            await backend.load()
        elif isinstance(backend, ClassifierBackend):
            await asyncio.to_thread(backend.ready_model)


def describe_models(pipeline: Pipeline) -> tuple[bool, str]:
    """``(offline, line)``: whether every backend is local, and a plain sentence naming the models."""
    bindings = pipeline.spec.models
    offline = all(bindings[alias].backend in LOCAL_BACKENDS for alias in pipeline.backends)
    if offline:
        parts: list[str] = []
        for alias, backend in pipeline.backends.items():
            kind = bindings[alias].backend
            part = {
                "classifier": f"classifier {backend.model}",
                "llamacpp": f"{backend.model} via llama.cpp",
            }.get(kind, f"{kind} {backend.model}")
            if part not in parts:
                parts.append(part)
        return True, f"offline: {' + '.join(parts)}, no network"
    described = pipeline.describe_models()
    return False, "uses the network: " + "; ".join(f"{alias} = {text}" for alias, text in described.items())


async def run_demo(
    graph: Path,
    tickets_path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
) -> DemoRun:
    """Build the pipeline, load its models, then run the demo tickets one after another."""
    from triagegate.pipeline import load

    tickets = load_tickets(tickets_path or default_tickets(graph))
    started = time.perf_counter()
    pipeline = await asyncio.to_thread(load, graph, environ=environ, cache_dir=cache_dir)
    async with pipeline:
        await warm_up(pipeline)
        loaded = time.perf_counter()
        outcomes = [await pipeline.run(ticket) for ticket in tickets]
        finished = time.perf_counter()
        offline, line = describe_models(pipeline)
    return DemoRun(
        tickets=tickets,
        outcomes=outcomes,
        load_seconds=loaded - started,
        ticket_seconds=finished - loaded,
        offline=offline,
        models_line=line,
    )


def _confidence(outcome: Outcome) -> str:
    if outcome.confidence is None:
        return "-"
    return f"{outcome.confidence:.2f} ({outcome.confidence_method})"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def paragraphs(text: str) -> str:
    """``text`` as the model wrote it, without runs of blank lines or trailing spaces: printed whole,
    wrapped by the console, never cut."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def grounded_in(outcome: Outcome) -> str:
    """The table's cell for the articles an answer was grounded in (``-`` for none)."""
    return ", ".join(outcome.sources) or "-"


def render(run: DemoRun, console: Console) -> None:
    """Print the table of outcomes, then every ticket and its whole answer, the timings and the models.

    Answers are printed in full and wrapped to the console's width, each under its ticket with
    the route that answered and the articles it was given, so a reader can judge them.
    """
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    table = Table(title="triagegate demo", title_justify="left")
    for name, options in (
        ("ticket", {"no_wrap": True}),
        ("route", {}),
        ("category", {}),
        ("confidence (method)", {}),
        ("why escalated", {"overflow": "fold"}),
        ("grounded in", {"overflow": "fold"}),
        ("cost", {"justify": "right"}),
        ("latency", {"justify": "right"}),
    ):
        kwargs: dict[str, Any] = options
        table.add_column(name, **kwargs)
    for outcome in run.outcomes:
        route = outcome.route if outcome.status == "ok" else f"{outcome.route} ({outcome.status})"
        table.add_row(
            outcome.ticket_id,
            route,
            outcome.category or "-",
            _confidence(outcome),
            ", ".join(outcome.escalation_reasons) or "-",
            grounded_in(outcome),
            f"${outcome.cost_usd:.4f}",
            f"{outcome.latency_ms / 1000:.2f} s",
        )
    console.print(table)
    for ticket, outcome in zip(run.tickets, run.outcomes, strict=True):
        console.print()
        heading = Text(ticket.id, style="bold")
        heading.append(f"  answered by {outcome.route}, grounded in {grounded_in(outcome)}", style="dim")
        console.print(heading)
        asked = f"{ticket.subject}: {ticket.text}" if ticket.subject else ticket.text
        console.print(Padding(Text("ticket: ", style="italic") + Text(paragraphs(asked)), (0, 0, 0, 2)))
        if outcome.answer:
            console.print(
                Padding(Text("answer: ", style="italic") + Text(paragraphs(outcome.answer)), (0, 0, 0, 2))
            )
        for error in outcome.errors:
            console.print(Padding(Text(f"error: {_one_line(error, 400)}", style="red"), (0, 0, 0, 2)))
    console.print()
    count = len(run.outcomes)
    console.print(
        f"models built and loaded in {run.load_seconds:.2f} s; "
        f"{count} ticket{'s' if count != 1 else ''} in {run.ticket_seconds:.2f} s; "
        f"total {run.load_seconds + run.ticket_seconds:.2f} s",
        highlight=False,
    )
    console.print(run.models_line, markup=False, highlight=False)
    if run.offline:
        console.print(OFFLINE_NOTE, markup=False, highlight=False)
