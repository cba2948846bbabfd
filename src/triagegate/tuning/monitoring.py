"""The gate in production, from the outcome store: the figures ``triagegate report`` prints and
``serve`` exports, as pure functions of a :class:`~triagegate.store.Snapshot`.

* **Precision of kept answers**: a kept ticket (answered by a tier before the last) with a
  label is right when the label is its category. A ticket's label is the most trusted it has
  (human, then dataset, then shadow: :data:`~triagegate.store.LABEL_SOURCES`). Intervals are
  Wilson score intervals (95%), which stay inside [0, 1] and behave with few labels.
* **Alert**: a tier whose graph sets ``gate.shadow.target`` alerts when the lower bound of its
  precision falls under the target (``report`` exits 3).
* **Drift**: the population stability index of a tier's live confidences against the
  histogram recorded at calibration (:func:`reference_histogram`), over the reference's own
  bins; 0.1 is a moderate shift and 0.2 or more a significant one (:data:`PSI_SHIFT`).
* **Cost against all-flagship**: what the tickets cost, against what sending every ticket to
  the last tier would have: the tickets times the mean cost of the last tier's calls measured
  in the same window (none when no ticket reached it). Shadow runs are counted apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from triagegate.errors import InputError
from triagegate.store.records import LABEL_SOURCES, GraphInfo, Label, Reference, Snapshot, StoredOutcome
from triagegate.types import Outcome

Z95 = 1.959963984540054
PSI_SHIFT = 0.2
"""Population stability index at which the confidence distribution counts as shifted."""
_PSI_FLOOR = 1e-4


class Precision(BaseModel):
    labelled: int
    right: int
    precision: float | None
    low: float | None
    high: float | None


class TierFigures(BaseModel):
    tier: str
    kept: int
    """Tickets this tier answered (the last tier: every ticket that reached it)."""
    share: float
    precision: Precision | None = None
    """Kept answers judged by labels (tiers before the last)."""
    acceptable: Precision | None = None
    """Shadow judgements of the kept answer (``acceptable``) where the judge gave one."""
    by_category: dict[str, Precision] = Field(default_factory=dict)
    target: float | None = None
    alert: bool = False
    psi: float | None = None
    drifted: bool = False
    shadow_scheduled: int = 0
    shadow_capped: int = 0


class CostFigures(BaseModel):
    usd: float
    all_flagship_usd: float | None
    ratio: float | None
    shadow_usd: float
    shadow_share_of_all_flagship: float | None
    basis: str


class MonitoringReport(BaseModel):
    tickets: int
    by_status: dict[str, int]
    graphs: list[str]
    tiers: list[TierFigures]
    cost: CostFigures
    alerts: list[str] = Field(default_factory=list)


class SeriesPoint(BaseModel):
    start: float
    end: float
    tickets: int
    escalation: float | None
    cost_per_ticket: float | None
    precision: Precision


def wilson(right: int, n: int, z: float = Z95) -> Precision:
    """The Wilson score interval of ``right`` successes in ``n`` (all None for ``n == 0``)."""
    if n <= 0:
        return Precision(labelled=0, right=0, precision=None, low=None, high=None)
    p = right / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))
    return Precision(labelled=n, right=right, precision=p, low=low, high=high)


def reference_histogram(graph: str, tier: str, confidences: Sequence[float], bins: int = 10) -> Reference:
    """The calibration-time distribution of ``confidences``: bins at its quantiles (so each holds
    about the same share, however the confidences bunch near 1), widened to cover [0, 1]."""
    values = np.asarray([c for c in confidences if not math.isnan(c)], dtype=float)
    if values.size == 0:
        raise InputError(f"no confidences for tier {tier!r} to record a reference histogram from")
    inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    inner = inner[(inner > 0.0) & (inner < 1.0)]
    edges = [0.0, *inner.tolist(), 1.0 + 1e-9]
    counts = _counts(values, edges)
    shares = (counts / counts.sum()).tolist()
    return Reference(graph=graph, tier=tier, edges=edges, shares=shares, tickets=int(values.size))


def _counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    index = np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1).astype(float)


def psi(reference: Reference, confidences: Sequence[float]) -> float | None:
    """Population stability index of ``confidences`` against ``reference`` (None without any)."""
    values = np.asarray(confidences, dtype=float)
    if values.size == 0:
        return None
    live = _counts(values, reference.edges) / values.size
    expected = np.asarray(reference.shares)
    live, expected = np.maximum(live, _PSI_FLOOR), np.maximum(expected, _PSI_FLOOR)
    return float(np.sum((live - expected) * np.log(live / expected)))


def label_of(labels: Iterable[Label]) -> dict[str, Label]:
    """Each ticket's most trusted label."""
    rank = {source: i for i, source in enumerate(LABEL_SOURCES)}
    best: dict[str, Label] = {}
    for label in labels:
        held = best.get(label.ticket_id)
        if held is None or rank[label.source] < rank[held.source]:
            best[label.ticket_id] = label
    return best


def tier_confidence(outcome: Outcome, tier: str) -> float | None:
    """The confidence ``tier``'s gate compared for ``outcome`` (None when the tier did not gate it)."""
    for decision in outcome.decisions:
        if decision.tier == tier and decision.route != "skip":
            return decision.confidence
    return None


def _tiers(snapshot: Snapshot, outcomes: Sequence[Outcome]) -> tuple[list[str], dict[str, float], set[str]]:
    hashes = {o.graph_hash for o in outcomes}
    graphs: list[GraphInfo] = [g for g in snapshot.graphs if g.graph_hash in hashes] or list(snapshot.graphs)
    tiers: list[str] = []
    targets: dict[str, float] = {}
    for g in graphs:
        tiers += [t for t in g.tiers if t not in tiers]
        targets.update(g.targets)
    last = {g.tiers[-1] for g in graphs}
    for o in outcomes:
        if o.route not in tiers and o.route != "none":
            tiers.append(o.route)
    return tiers, targets, last


def kept_precision(
    outcomes: Sequence[Outcome], labels: dict[str, Label], last: set[str]
) -> tuple[Precision, dict[str, Precision]]:
    """Precision of the kept, labelled answers among ``outcomes``, overall and per category."""
    right = n = 0
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        label = labels.get(o.ticket_id)
        if label is None or o.status != "ok" or o.route in last or o.category is None:
            continue
        ok = int(label.label == o.category)
        right, n = right + ok, n + 1
        per[o.category][0] += ok
        per[o.category][1] += 1
    return wilson(right, n), {c: wilson(r, k) for c, (r, k) in sorted(per.items())}


def build_report(
    snapshot: Snapshot, *, targets: dict[str, float] | None = None, graph: str | None = None
) -> MonitoringReport:
    """Every figure of the report over the outcomes in ``snapshot`` (pure).

    ``targets`` overrides the graphs' own ``gate.shadow.target`` by tier; ``graph`` picks the
    reference histograms by graph name (default: the graph the outcomes name).
    """
    outcomes = [s.outcome for s in snapshot.outcomes]
    tiers, graph_targets, last = _tiers(snapshot, outcomes)
    graph_targets.update(targets or {})
    labels = label_of(snapshot.labels)
    names = sorted({o.graph for o in outcomes if o.graph})
    graph_name = graph or (names[0] if names else None)
    references = {r.tier: r for r in snapshot.references if r.graph == graph_name}
    by_status: dict[str, int] = defaultdict(int)
    for o in outcomes:
        by_status[o.status] += 1
    total = len(outcomes)
    figures: list[TierFigures] = []
    alerts: list[str] = []
    for tier in tiers:
        mine = [o for o in outcomes if o.route == tier]
        fig = TierFigures(tier=tier, kept=len(mine), share=len(mine) / total if total else 0.0)
        fig.shadow_scheduled = sum(1 for o in mine if o.shadow and o.shadow.status == "scheduled")
        fig.shadow_capped = sum(1 for o in mine if o.shadow and o.shadow.status == "capped")
        if tier not in last:
            fig.precision, fig.by_category = kept_precision(mine, labels, last)
            judged = [labels[o.ticket_id] for o in mine if o.ticket_id in labels]
            scored = [lab.acceptable for lab in judged if lab.acceptable is not None]
            fig.acceptable = wilson(sum(scored), len(scored))
            fig.target = graph_targets.get(tier)
            low = fig.precision.low
            if fig.target is not None and low is not None and low < fig.target:
                fig.alert = True
                alerts.append(
                    f"tier {tier}: kept precision {fig.precision.precision:.3f} (95% interval {low:.3f}-"
                    f"{fig.precision.high:.3f}, {fig.precision.labelled} labels) has its lower bound under "
                    f"the target {fig.target}"
                )
            if fig.shadow_capped:
                alerts.append(
                    f"tier {tier}: {fig.shadow_capped} sampled ticket(s) not shadowed: the daily budget was spent"
                )
        if tier in references:
            live = [c for o in outcomes if (c := tier_confidence(o, tier)) is not None]
            fig.psi = psi(references[tier], live)
            fig.drifted = fig.psi is not None and fig.psi >= PSI_SHIFT
            if fig.drifted:
                alerts.append(
                    f"tier {tier}: confidence distribution shifted (PSI {fig.psi:.3f} >= {PSI_SHIFT})"
                )
        figures.append(fig)
    return MonitoringReport(
        tickets=total,
        by_status=dict(by_status),
        graphs=names,
        tiers=figures,
        cost=cost_figures(outcomes, labels, last),
        alerts=alerts,
    )


def cost_figures(outcomes: Sequence[Outcome], labels: dict[str, Label], last: set[str]) -> CostFigures:
    usd = sum(o.cost_usd for o in outcomes)
    flagship = [r.cost_usd for o in outcomes for r in o.nodes if r.node in last and r.error is None]
    ids = {o.ticket_id for o in outcomes}
    shadow = sum(lab.cost_usd for lab in labels.values() if lab.source == "shadow" and lab.ticket_id in ids)
    if not flagship:
        return CostFigures(
            usd=usd,
            all_flagship_usd=None,
            ratio=None,
            shadow_usd=shadow,
            shadow_share_of_all_flagship=None,
            basis="no ticket reached the last tier in this window, so its cost per ticket is unknown",
        )
    all_flagship = len(outcomes) * sum(flagship) / len(flagship)
    return CostFigures(
        usd=usd,
        all_flagship_usd=all_flagship,
        ratio=usd / all_flagship if all_flagship else None,
        shadow_usd=shadow,
        shadow_share_of_all_flagship=shadow / all_flagship if all_flagship else None,
        basis=f"all-flagship: {len(outcomes)} tickets x the mean measured cost of {len(flagship)} last-tier call(s)",
    )


def series(snapshot: Snapshot, buckets: int = 20) -> list[SeriesPoint]:
    """Escalation share, cost per ticket and kept precision in ``buckets`` equal spans of time."""
    rows: list[StoredOutcome] = snapshot.outcomes
    if not rows:
        return []
    outcomes = [s.outcome for s in rows]
    _, _, last = _tiers(snapshot, outcomes)
    labels = label_of(snapshot.labels)
    start, end = rows[0].created_at, rows[-1].created_at
    width = (end - start) / buckets or 1.0
    groups: list[list[Outcome]] = [[] for _ in range(buckets)]
    for s in rows:
        groups[min(buckets - 1, int((s.created_at - start) / width))].append(s.outcome)
    points = []
    for i, group in enumerate(groups):
        n = len(group)
        points.append(
            SeriesPoint(
                start=start + i * width,
                end=start + (i + 1) * width,
                tickets=n,
                escalation=sum(o.escalated for o in group) / n if n else None,
                cost_per_ticket=sum(o.cost_usd for o in group) / n if n else None,
                precision=kept_precision(group, labels, last)[0],
            )
        )
    return points


def plot_series(points: Sequence[SeriesPoint], path: str | Path, *, title: str = "") -> Path:
    """Precision (with its interval), escalation and cost per ticket over time, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'triagegate[calibrate]'") from None
    path = Path(path)
    t0 = points[0].start if points else 0.0
    hours = [((p.start + p.end) / 2 - t0) / 3600 for p in points]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    try:
        pts = [
            (h, p.precision) for h, p in zip(hours, points, strict=True) if p.precision.precision is not None
        ]
        top.plot([h for h, _ in pts], [p.precision for _, p in pts], marker="o", label="kept precision")
        top.fill_between(
            [h for h, _ in pts],
            [p.low for _, p in pts],
            [p.high for _, p in pts],
            alpha=0.25,
            label="95% Wilson",
        )
        top.set_ylabel("precision of kept answers")
        top.legend(loc="lower left")
        esc = [(h, p.escalation) for h, p in zip(hours, points, strict=True) if p.escalation is not None]
        middle.plot([h for h, _ in esc], [e for _, e in esc], marker=".", color="tab:orange")
        middle.set_ylabel("escalation share")
        cost = [
            (h, p.cost_per_ticket)
            for h, p in zip(hours, points, strict=True)
            if p.cost_per_ticket is not None
        ]
        bottom.plot([h for h, _ in cost], [1000 * c for _, c in cost], marker=".", color="tab:green")
        bottom.set_ylabel("USD per 1,000 tickets")
        bottom.set_xlabel("hours since the first outcome in the window")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def labelled_predictions(snapshot: Snapshot, tier: str) -> list[tuple[str, str, float]]:
    """``(label, category, confidence)`` for each labelled ticket ``tier`` kept, in time order (pure).

    What ``calibrate --from-store`` fits thresholds on. Only kept tickets carry the tier's own
    category (an escalated ticket's Outcome has the later tier's), so the confidences all lie at
    or above the thresholds they were kept under: a refit can raise a threshold, and can lower
    it only as far as the lowest confidence kept.
    """
    labels = label_of(snapshot.labels)
    out = []
    for stored in snapshot.outcomes:
        o = stored.outcome
        label = labels.get(o.ticket_id)
        confidence = tier_confidence(o, tier)
        if label is None or o.route != tier or o.status != "ok" or o.category is None or confidence is None:
            continue
        out.append((label.label, o.category, confidence))
    return out


def tier_costs(snapshot: Snapshot, tier: str) -> tuple[float | None, float | None]:
    """Mean measured USD of a ticket ``tier`` kept, and of one it escalated (None without any)."""
    kept = [
        s.outcome.cost_usd for s in snapshot.outcomes if s.outcome.route == tier and s.outcome.status == "ok"
    ]
    escalated = [
        s.outcome.cost_usd
        for s in snapshot.outcomes
        if s.outcome.status == "ok"
        and any(d.tier == tier and d.route == "escalate" for d in s.outcome.decisions)
    ]
    return (sum(kept) / len(kept) if kept else None, sum(escalated) / len(escalated) if escalated else None)
