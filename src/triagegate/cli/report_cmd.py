"""``triagegate report STORE``: the gate's precision, escalation, cost and drift in production."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triagegate.cli import app
from triagegate.cli.common import JsonOpt

if TYPE_CHECKING:
    from triagegate.tuning.monitoring import MonitoringReport, Precision

EXIT_BELOW_TARGET = 3
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str) -> float | None:
    """``24h``, ``30m``, ``7d``, ``90s``, ``2w`` as seconds; ``all`` as None. Raises :class:`InputError`."""
    from triagegate.errors import InputError

    if value.strip().lower() == "all":
        return None
    match = _DURATION.match(value)
    if match is None:
        raise InputError(f"--since {value!r}: give a duration such as 24h, 30m, 7d, or 'all'")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_targets(values: list[str]) -> dict[str, float]:
    """``TIER=0.95`` pairs as a mapping. Raises :class:`InputError`."""
    from triagegate.errors import InputError

    out = {}
    for value in values:
        tier, sep, number = value.partition("=")
        try:
            target = float(number)
        except ValueError:
            target = -1.0
        if not sep or not tier or not 0 < target <= 1:
            raise InputError(
                f"--target {value!r}: give TIER=PRECISION with a precision in (0, 1], e.g. mini=0.95"
            )
        out[tier] = target
    return out


@app.command("report")
def report(
    store: Annotated[
        str, typer.Argument(help="Outcome store: a SQLite file or a postgresql:// URL.", show_default=False)
    ],
    since: Annotated[
        str, typer.Option("--since", help="Window: outcomes written in the last 24h, 30m, 7d, ... or 'all'.")
    ] = "24h",
    graph_hash: Annotated[
        str | None, typer.Option("--graph-hash", help="Only outcomes of this graph hash.")
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target", help="TIER=PRECISION, overriding the graph's gate.shadow.target (repeatable)."
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write precision, escalation and cost over time as a PNG.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Report tickets, share kept per tier, cost against all-flagship, live precision of kept answers
    (Wilson 95% intervals, per category) from shadow and human labels, and drift of the confidence
    distribution against the calibration data (PSI).

    Exit codes: 0 fine, 2 usage error, 3 the lower bound of a tier's kept precision is under its
    target (gate.shadow.target in the graph, or --target), so a cron job can alert.

    Example: triagegate report outcomes.jsonl.store.sqlite --since 24h --plot gate.png
    """
    import json
    import time

    from triagegate.store import StoreError, describe_store, read_store
    from triagegate.tuning.monitoring import build_report, plot_series, series

    window = parse_since(since)
    targets = parse_targets(target or [])
    try:
        snapshot = read_store(
            store, since=None if window is None else time.time() - window, graph_hash=graph_hash
        )
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the outcome store {describe_store(store)}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("psycopg", "sqlite3")):
            raise StoreError(f"cannot read the outcome store {describe_store(store)}: {exc}") from None
        raise
    figures = build_report(snapshot, targets=targets)
    if plot is not None:
        plot_series(series(snapshot), plot, title=f"{describe_store(store)}, last {since}")
    if as_json:
        typer.echo(json.dumps(figures.model_dump(mode="json"), indent=2))
    else:
        typer.echo(render(figures, since))
    if any(t.alert for t in figures.tiers):
        raise typer.Exit(EXIT_BELOW_TARGET)


def _interval(p: Precision) -> str:
    if p.precision is None:
        return "no labels"
    return f"{p.precision:.3f} [{p.low:.3f}, {p.high:.3f}] ({p.right}/{p.labelled})"


def render(figures: MonitoringReport, since: str) -> str:
    """The report as text for a terminal or a cron mail."""
    status = ", ".join(f"{k} {v}" for k, v in sorted(figures.by_status.items()))
    lines = [
        f"tickets: {figures.tickets} in the last {since} ({status or 'none'}); graphs: {', '.join(figures.graphs) or '-'}"
    ]
    for t in figures.tiers:
        lines.append(f"tier {t.tier}: answered {t.kept} ({t.share:.1%})")
        if t.precision is not None:
            target = f", target {t.target}" if t.target is not None else ""
            flag = "  << UNDER TARGET" if t.alert else ""
            lines.append(f"  kept precision: {_interval(t.precision)}{target}{flag}")
            if t.acceptable is not None and t.acceptable.labelled:
                lines.append(f"  kept answers judged acceptable: {_interval(t.acceptable)}")
            for category, p in t.by_category.items():
                lines.append(f"    {category}: {_interval(p)}")
            lines.append(
                f"  shadow: {t.shadow_scheduled} scheduled, {t.shadow_capped} not run (daily budget spent)"
            )
        if t.psi is not None:
            lines.append(
                f"  confidence drift (PSI vs calibration): {t.psi:.3f}{'  << SHIFTED' if t.drifted else ''}"
            )
    c = figures.cost
    if c.all_flagship_usd is not None and c.ratio is not None:
        lines.append(
            f"cost: ${c.usd:.4f}, {c.ratio:.1%} of all-flagship (${c.all_flagship_usd:.4f}; {c.basis})"
        )
    else:
        lines.append(f"cost: ${c.usd:.4f} ({c.basis})")
    share = (
        f", {c.shadow_share_of_all_flagship:.2%} of all-flagship"
        if c.shadow_share_of_all_flagship is not None
        else ""
    )
    lines.append(f"shadow runs cost: ${c.shadow_usd:.4f}{share}")
    lines += [f"ALERT {a}" for a in figures.alerts]
    return "\n".join(lines)
