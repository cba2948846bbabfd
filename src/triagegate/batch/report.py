"""Summary statistics of a batch run: counts, escalation, cost, latency and failures.

:class:`RunStats` sees every Outcome a run writes and keeps only counters, a compact
array of latencies (8 bytes per ticket) and the first few failures, so it stays small on
long batches. Latency percentiles cover tickets that reached the graph; rows rejected
before it (bad input, duplicates) have no latency. ``by_route`` counts tickets by the
tier that answered them; the escalation rate is the share of routed tickets that went past
a tier that could have answered them (:attr:`Outcome.escalated`), and ``by_tier`` counts
each tier's gate decisions (keep, escalate, skip).
"""

from __future__ import annotations

import json
import math
import os
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from triagegate.types import Outcome

MAX_EXAMPLES = 20


def failure_kind(outcome: Outcome) -> str:
    """A short label for why an outcome failed, for grouping (``<node>:<error class>`` such as ``mini:RateLimited``, ``text_too_long``...)."""
    failed = next((run for run in outcome.nodes if run.error_type), None)
    if failed is not None:
        return f"{failed.node}:{failed.error_type}"
    first = outcome.errors[0] if outcome.errors else ""
    if "characters, over the limit" in first:
        return "text_too_long"
    if "attachments, over the limit" in first:
        return "too_many_attachments"
    if first.startswith("image ") or "cannot read image" in first:
        return "image_error"
    if first.startswith("internal error"):
        return "internal_error"
    return "no_answer" if outcome.answer is None else "failed"


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class RunStats:
    """Accumulates what one run wrote."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.finished: float | None = None
        self.written = 0
        self.already_done = 0
        self.by_status: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.routed = 0
        self.escalated = 0
        self.by_tier: dict[str, Counter[str]] = {}
        self.by_category: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.failure_kinds: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []
        self.cost_usd = 0.0
        self.graph_cost_usd = 0.0
        self.graph_tickets = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.latencies = array("d")

    def add(self, outcome: Outcome, line: int, kind: str | None = None) -> None:
        """Count one written outcome; ``kind`` labels a row rejected before the graph.

        Only outcomes that ran graph nodes count towards latency and the average cost.
        """
        self.written += 1
        self.by_status[outcome.status] += 1
        self.cost_usd += outcome.cost_usd
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        if kind is None and outcome.nodes:
            self.graph_tickets += 1
            self.graph_cost_usd += outcome.cost_usd
            self.latencies.append(outcome.latency_ms)
        if outcome.route != "none":
            self.by_route[outcome.route] += 1
            self.routed += 1
            self.escalated += outcome.escalated
        for decision in outcome.decisions:
            self.by_tier.setdefault(decision.tier, Counter())[decision.route] += 1
        if outcome.category:
            self.by_category[outcome.category] += 1
        if outcome.escalated:
            self.reasons.update(outcome.escalation_reasons)
        if outcome.status not in ("ok", "awaiting_human"):
            label = kind or failure_kind(outcome)
            self.failure_kinds[label] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(
                    {
                        "ticket_id": outcome.ticket_id,
                        "line": line,
                        "status": outcome.status,
                        "kind": label,
                        "error": outcome.errors[0] if outcome.errors else "",
                    }
                )

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.routed if self.routed else 0.0

    @property
    def throughput(self) -> float:
        elapsed = self.elapsed
        return self.written / elapsed if elapsed > 0 else 0.0

    def average_graph_cost(self) -> float | None:
        """Mean cost of the tickets that went through the graph, or ``None`` before the first."""
        return self.graph_cost_usd / self.graph_tickets if self.graph_tickets else None

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "written": self.written,
            "already_done": self.already_done,
            "elapsed_s": round(self.elapsed, 3),
            "throughput_per_s": round(self.throughput, 3),
            "by_status": dict(self.by_status),
            "by_route": dict(self.by_route),
            "by_tier": {tier: dict(counts) for tier, counts in self.by_tier.items()},
            "by_category": dict(self.by_category.most_common()),
            "escalation": {
                "rate": round(self.escalation_rate, 6),
                "reasons": dict(self.reasons.most_common()),
            },
            "cost_usd": {
                "total": self.cost_usd,
                "per_1000_tickets": self.cost_usd / self.written * 1000 if self.written else 0.0,
            },
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "latency_ms": {
                "count": len(ordered),
                "p50": round(percentile(ordered, 0.50), 3),
                "p95": round(percentile(ordered, 0.95), 3),
                "p99": round(percentile(ordered, 0.99), 3),
                "max": round(ordered[-1], 3) if ordered else 0.0,
            },
            "failures": {
                "count": self.by_status["failed"] + self.by_status["skipped"],
                "by_kind": dict(self.failure_kinds.most_common()),
                "examples": self.examples,
            },
        }


def render_summary(report: dict[str, Any]) -> str:
    """The end-of-batch summary for humans, from the report dictionary."""
    run = report["run"]
    lat = run["latency_ms"]
    status = run["by_status"]
    routes = run["by_route"]
    lines = [
        f"batch {report['state']}: {run['written']} outcome(s) written in {run['elapsed_s']:.1f} s "
        f"({run['throughput_per_s']:.1f}/s); {run['already_done']} row(s) were already done",
        f"  status      ok {status.get('ok', 0)}, failed {status.get('failed', 0)}, skipped {status.get('skipped', 0)}",
        f"  routes      {', '.join(f'{k} {v}' for k, v in routes.items()) or 'none'} "
        f"(escalation rate {run['escalation']['rate']:.1%})",
    ]
    skips = {tier: counts["skip"] for tier, counts in run.get("by_tier", {}).items() if counts.get("skip")}
    if skips:
        lines.append(f"  skipped     {', '.join(f'{k} {v}' for k, v in skips.items())} (pre-gate)")
    if run["escalation"]["reasons"]:
        reasons = ", ".join(f"{k} {v}" for k, v in list(run["escalation"]["reasons"].items())[:6])
        lines.append(f"  escalated   {reasons}")
    if run["by_category"]:
        cats = ", ".join(f"{k} {v}" for k, v in list(run["by_category"].items())[:8])
        lines.append(f"  categories  {cats}")
    cost = run["cost_usd"]
    lines.append(f"  cost        ${cost['total']:.4f} (${cost['per_1000_tickets']:.4f} per 1,000 tickets)")
    if lat["count"]:
        lines.append(
            f"  latency     p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms"
        )
    failures = run["failures"]
    if failures["by_kind"]:
        kinds = ", ".join(f"{k} {v}" for k, v in failures["by_kind"].items())
        lines.append(f"  problems    {kinds}")
    batch = report.get("batch")
    if batch:
        lines.append(
            f"  whole batch {batch['rows']} row(s) recorded, spent ${batch['spent_usd']:.4f} "
            f"(output {report['output']})"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as pretty JSON, atomically (a reader never sees half a report)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
