"""``--dry-run``: validate the whole input and estimate tokens and cost without calling a model.

Nothing is written. Rows are checked exactly as a real run would check them (parsing,
ticket fields, text and attachment limits, image files by size and magic bytes,
duplicate ids), and an existing ledger is opened read-only so rows already done are
counted rather than estimated. Duplicate ids are tracked in a temporary on-disk SQLite
table, so memory stays flat on inputs of any length.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any

from triagegate.batch.ledger import Ledger
from triagegate.batch.report import MAX_EXAMPLES
from triagegate.batch.runner import BatchOptions
from triagegate.cost import EstimateTotals, Estimator
from triagegate.errors import InputError
from triagegate.images import check_attachment
from triagegate.inputs import Row, RowError, open_input, read_rows, resolve_format, to_ticket
from triagegate.pipeline import check_limits
from triagegate.prompts import load_graph_templates
from triagegate.spec import LoadedSpec


class _Seen:
    """Ids seen so far in this input (id -> first line), in a temporary on-disk table."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")
        self._db.execute("CREATE TABLE seen(id TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID")

    def first_line(self, ticket_id: str) -> int | None:
        row = self._db.execute("SELECT line FROM seen WHERE id = ?", (ticket_id,)).fetchone()
        return None if row is None else int(row[0])

    def add(self, ticket_id: str, line: int) -> None:
        self._db.execute("INSERT INTO seen VALUES (?, ?)", (ticket_id, line))

    def close(self) -> None:
        self._db.close()


def dry_run(loaded: LoadedSpec, options: BatchOptions) -> dict[str, Any]:
    """Check every row and estimate the batch; returns the dry-run report."""
    templates = load_graph_templates(loaded)
    estimator = Estimator(loaded.spec, templates)
    this_hash = loaded.content_hash({node: t.text for node, t in templates.items()})
    ledger = Ledger(options.ledger_path, readonly=True) if options.ledger_path.exists() else None
    seen = _Seen()
    totals = EstimateTotals()
    kinds: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    counts = Counter[str]()
    stream = open_input(options.input)
    try:
        fmt = resolve_format(options.input, options.format, stream)
        for row in read_rows(stream, fmt, source=options.input):
            counts["read"] += 1
            verdict = _classify(row, seen, ledger, options.retry_failed)
            if verdict == "done":
                counts["already_done"] += 1
                continue
            if options.limit is not None and counts["to_write"] >= options.limit:
                counts["beyond_limit"] += 1
                continue
            counts["to_write"] += 1
            problem = _problem(row, loaded, estimator, totals) if verdict != "duplicate" else None
            if verdict == "duplicate":
                problem = ("duplicate_id", f"line {row.line}: duplicate id {row.id!r}")
            if problem is not None:
                kinds[problem[0]] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(
                        {"ticket_id": row.id, "line": row.line, "kind": problem[0], "error": problem[1]}
                    )
    finally:
        if options.input != "-":
            stream.close()
        seen.close()
        recorded_hash = ledger.graph_hash if ledger else None
        spent = ledger.spent_usd if ledger else 0.0
        if ledger is not None:
            ledger.close()
    estimate = totals.as_dict(options.assume_escalation)
    expected = float(estimate["cost_usd"]["expected"])  # type: ignore[index]
    return {
        "state": "dry_run",
        "graph": {"name": loaded.spec.name, "hash": this_hash, "ledger_hash": recorded_hash},
        "input": options.input,
        "output": str(options.output),
        "ledger": str(options.ledger_path) if ledger is not None else None,
        "rows": {
            "read": counts["read"],
            "already_done": counts["already_done"],
            "to_run": totals.tickets,
            "rejected": sum(kinds.values()),
            "beyond_limit": counts["beyond_limit"],
            "by_kind": dict(kinds.most_common()),
            "examples": examples,
        },
        "estimate": estimate,
        "budget": {
            "max_cost": options.max_cost,
            "spent_usd": spent,
            "expected_total_usd": spent + expected,
            "fits": None if options.max_cost is None else spent + expected <= options.max_cost,
        },
    }


def _classify(row: Row, seen: _Seen, ledger: Ledger | None, retry_failed: bool) -> str:
    """``done``, ``duplicate`` or ``run``, by the same rules as :class:`~.runner.BatchRunner`."""
    known = seen.first_line(row.id)
    entry = None
    if known is None:
        seen.add(row.id, row.line)
        entry = ledger.lookup(row.id) if ledger is not None else None
        known = entry.line if entry is not None else None
    if known is None:
        return "run"
    if known != row.line:
        return "done" if ledger is not None and ledger.has_duplicate(row.line) else "duplicate"
    if entry is not None and entry.status == "failed" and retry_failed:
        return "run"
    return "done"


def _problem(
    row: Row, loaded: LoadedSpec, estimator: Estimator, totals: EstimateTotals
) -> tuple[str, str] | None:
    """``(kind, message)`` if the row would fail before reaching a model; else adds its estimate."""
    try:
        ticket = to_ticket(row)
    except RowError as exc:
        return exc.kind, str(exc)
    limits = loaded.spec.limits
    try:
        check_limits(ticket, limits)
    except InputError as exc:
        return exc.code, f"line {row.line}: {exc}"
    for attachment in ticket.attachments:
        try:
            check_attachment(attachment, limits)
        except InputError as exc:
            return "image_error", f"line {row.line}: {exc}"
    totals.add(estimator.ticket(ticket))
    return None


def render_dry_run(report: dict[str, Any]) -> str:
    rows = report["rows"]
    est = report["estimate"]
    cost = est["cost_usd"]
    tokens = est["tokens"]
    lines = [
        f"dry run: {rows['read']} row(s) read; {rows['to_run']} would run, {rows['rejected']} rejected, "
        f"{rows['already_done']} already done"
        + (f", {rows['beyond_limit']} beyond --limit" if rows["beyond_limit"] else ""),
    ]
    if rows["by_kind"]:
        lines.append("  rejected    " + ", ".join(f"{k} {v}" for k, v in rows["by_kind"].items()))
    for example in rows["examples"][:5]:
        lines.append(f"    {example['error']}")
    lines.append(
        f"  tokens      mini {tokens['mini_input']} in / up to {tokens['mini_output_max']} out; "
        f"flagship if all escalate {tokens['flagship_input_if_all_escalate']} in / "
        f"up to {tokens['flagship_output_max_if_all_escalate']} out"
    )
    lines.append(
        f"  cost (USD)  {cost['expected']:.4f} expected at {est['assumed_escalation_rate']:.0%} escalation "
        f"({cost['no_escalation']:.4f} if none escalate, {cost['all_escalate']:.4f} if all do; "
        f"{cost['expected_per_1000']:.4f} per 1,000); output tokens at max_tokens, so an upper bound"
    )
    budget = report["budget"]
    if budget["max_cost"] is not None:
        verdict = "fits within" if budget["fits"] else "would exceed"
        lines.append(
            f"  budget      spent {budget['spent_usd']:.4f} + expected {cost['expected']:.4f} {verdict} "
            f"--max-cost {budget['max_cost']}"
        )
    graph = report["graph"]
    if graph["ledger_hash"] and graph["ledger_hash"] != graph["hash"]:
        lines.append(
            f"  warning     the output's ledger was written with graph hash {graph['ledger_hash']}, this graph is "
            f"{graph['hash']}: a real run needs --allow-graph-change"
        )
    return "\n".join(lines)
