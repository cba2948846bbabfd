"""``triagegate queue status``: how far behind the workers are, what is stuck, what died.

Everything is read from Redis: stream length and the group's lag and pending count
(XINFO), each consumer's pending count and idle time (XINFO CONSUMERS), the dead-letter
stream's length, and the counters each worker publishes (processed, rate over the last
minute, dead letters, errors).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel
from redis.exceptions import ResponseError

from triagegate.queue.redis_stream import TicketStream

STALE_AFTER_S = 30.0


class ConsumerStatus(BaseModel):
    name: str
    pending: int = 0
    idle_ms: int | None = None
    processed: int | None = None
    rate_per_s: float | None = None
    dead: int | None = None
    errors: int | None = None
    in_flight: int | None = None
    reporting: bool = False
    """True when the worker published counters recently (it is alive)."""


class QueueStatus(BaseModel):
    stream: str
    group: str
    length: int
    group_exists: bool
    lag: int | None = None
    """Entries not yet delivered to the group (None if Redis cannot tell, e.g. after deletions)."""
    pending: int = 0
    """Delivered but not acknowledged."""
    dead_letters: int = 0
    throughput_per_s: float = 0.0
    consumers: list[ConsumerStatus] = []


async def queue_status(stream: TicketStream) -> QueueStatus:
    redis = stream.redis
    length = int(await redis.xlen(stream.stream))
    dead = int(await redis.xlen(stream.dead))
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream.stream)
    except ResponseError:
        groups = []
    group = next((g for g in groups if str(g.get("name")) == stream.group), None)
    report = QueueStatus(
        stream=stream.stream,
        group=stream.group,
        length=length,
        group_exists=group is not None,
        dead_letters=dead,
    )
    if group is None:
        report.lag = length
        return report
    report.pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    report.lag = int(lag) if lag is not None else None
    consumers: dict[str, ConsumerStatus] = {}
    for info in await redis.xinfo_consumers(stream.stream, stream.group):
        name = str(info["name"])
        consumers[name] = ConsumerStatus(
            name=name, pending=int(info.get("pending") or 0), idle_ms=int(info.get("idle") or 0)
        )
    now = time.time()
    published: dict[str, str] = await redis.hgetall(stream.stats)  # type: ignore[assignment]
    for stats_name, raw in published.items():
        try:
            stats = json.loads(raw)
        except ValueError:
            continue
        entry = consumers.setdefault(stats_name, ConsumerStatus(name=stats_name))
        entry.processed = int(stats.get("processed", 0))
        entry.dead = int(stats.get("dead", 0))
        entry.errors = int(stats.get("errors", 0))
        entry.in_flight = int(stats.get("in_flight", 0))
        fresh = now - float(stats.get("updated_at", 0)) < STALE_AFTER_S and not stats.get("stopping")
        entry.reporting = fresh
        entry.rate_per_s = float(stats.get("rate_per_s", 0.0)) if fresh else 0.0
    report.consumers = sorted(consumers.values(), key=lambda c: c.name)
    report.throughput_per_s = round(sum(c.rate_per_s or 0.0 for c in report.consumers), 3)
    return report


def render(report: QueueStatus) -> str:
    """A plain-text table for people."""
    lag = "unknown" if report.lag is None else str(report.lag)
    lines = [
        f"stream {report.stream} (group {report.group}): {report.length} entries, lag {lag}, "
        f"pending {report.pending}, dead letters {report.dead_letters}, throughput {report.throughput_per_s:.1f}/s",
    ]
    if not report.group_exists:
        lines.append("  the group does not exist yet (no worker has started)")
        return "\n".join(lines)
    header = f"  {'consumer':<32} {'pending':>8} {'idle':>8} {'processed':>10} {'rate/s':>8} {'dead':>6} {'errors':>7}  state"
    lines.append(header)
    for c in report.consumers:
        idle = "-" if c.idle_ms is None else f"{c.idle_ms / 1000:.1f}s"
        lines.append(
            f"  {c.name:<32} {c.pending:>8} {idle:>8} {_n(c.processed):>10} "
            f"{'-' if c.rate_per_s is None else f'{c.rate_per_s:.1f}':>8} {_n(c.dead):>6} {_n(c.errors):>7}  "
            f"{'running' if c.reporting else 'silent'}"
        )
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
