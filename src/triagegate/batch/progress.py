"""Progress of a running batch: a live rich bar on a terminal, periodic plain lines otherwise.

Both show rows done (of the total when it was cheap to count), rate, ETA, escalation
rate, failures and money spent so far. Plain lines go to stderr every ``interval``
seconds so logs of unattended runs show the batch is alive without flooding them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What progress shows: ``done`` rows of ``total`` (``None`` when unknown), of which
    ``written`` were written by this run, whose rate drives the ETA."""

    done: int
    total: int | None
    written: int
    elapsed: float
    escalation_rate: float
    spent_usd: float
    failed: int
    in_flight: int

    @property
    def rate(self) -> float:
        return self.written / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def brief(self) -> str:
        """A shorter form for the live bar, which shares a terminal line."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        eta = self.eta_seconds
        return (
            f"{count} {self.rate:.0f}/s eta {format_duration(eta) if eta is not None else '?'} "
            f"esc {self.escalation_rate:.0%} fail {self.failed} ${self.spent_usd:.4f}"
        )

    def describe(self) -> str:
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        eta = self.eta_seconds
        parts = [
            f"{count} rows",
            f"{self.rate:.1f}/s",
            f"eta {format_duration(eta)}" if eta is not None else "eta ?",
            f"escalated {self.escalation_rate:.1%}",
            f"failed {self.failed}",
            f"in flight {self.in_flight}",
            f"spent ${self.spent_usd:.4f}",
        ]
        return ", ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress(Protocol):
    async def follow(self, snapshot: Callable[[], Snapshot]) -> None:
        """Show ``snapshot()`` periodically until cancelled, then once more."""

    def message(self, text: str) -> None:
        """Print a line without garbling the display."""


class PlainProgress:
    """One ``progress:`` line every ``interval`` seconds."""

    def __init__(self, stream: TextIO, interval: float = DEFAULT_INTERVAL) -> None:
        self.stream = stream
        self.interval = interval

    async def follow(self, snapshot: Callable[[], Snapshot]) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.message("progress: " + snapshot().describe())
        except asyncio.CancelledError:
            self.message("progress: " + snapshot().describe())
            raise

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class RichProgress:
    """A live bar (pulsing when the total is unknown) with the figures beside it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=stream)

    async def follow(self, snapshot: Callable[[], Snapshot]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        first = snapshot()
        with Progress(
            TextColumn("[bold]batch"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            refresh_per_second=4,
        ) as bar:
            task = bar.add_task("batch", total=first.total, detail=first.brief())
            try:
                while True:
                    now = snapshot()
                    bar.update(task, completed=now.done, total=now.total, detail=now.brief())
                    await asyncio.sleep(0.25)
            except asyncio.CancelledError:
                now = snapshot()
                bar.update(task, completed=now.done, total=now.total, detail=now.brief())
                raise

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


def make_progress(stream: TextIO | None = None, *, interval: float = DEFAULT_INTERVAL) -> Progress:
    """Rich on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(stream)
    return PlainProgress(stream, interval)
