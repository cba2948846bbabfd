"""Every tier's threshold fitted to one objective, as a pure search over recorded per-tier predictions.

Each tier triages every ticket once (:func:`triagegate.tuning.scoring.score_tiers`, or a
replay of a recording), whether or not the cascade would send the ticket there; this
module then replays the cascade offline for any thresholds (:func:`simulate`): a ticket
enters the first tier the pre-gate lets run, a tier keeps it when the gate's other rules
keep it or its confidence reaches the tier's threshold, and otherwise it goes on to the
next tier the pre-gate lets run (a specialist tier runs only for the categories it serves,
as the tier before it assigned them); the last tier answers whatever reaches it. The
answer is right when the category of the tier that answered is the ticket's label.

The cost of a ticket is the estimated cost (:mod:`triagegate.cost`) of every call on its
path: each tier that ran, and the drafting call of a classifier tier that kept it.

:func:`fit` searches one global threshold per gated tier for the **cheapest** cascade whose
answers are at least ``target_accuracy`` accurate, optionally with at most
``max_last_share`` of tickets reaching the last tier and at most ``budget`` USD per 1,000
tickets. The search evaluates every combination on a coarse grid of each tier's observed
confidences, then refines one tier at a time on a finer grid; with a few tiers and a few
thousand tickets it takes well under a few seconds. When no combination meets every
constraint the most accurate one within the budget and the share is reported, marked
infeasible. Thresholds are fitted on one part of the tickets and reported on another.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from triagegate.gate import TicketFacts, pregate
from triagegate.models.base import Capabilities
from triagegate.prompts import DRAFT
from triagegate.spec import GraphSpec
from triagegate.tuning.calibration import FORCED_KEEP, THRESHOLD_DECIDES, nice_threshold
from triagegate.tuning.evaluation import CurvePoint, selective_curve
from triagegate.types import Triage

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Forced = npt.NDArray[np.int8]

COARSE_COMBINATIONS = 4000
"""About how many threshold combinations the coarse grid evaluates."""
FINE_POINTS = 200
"""Candidate thresholds per tier in the refinement pass."""
REFINE_ROUNDS = 3
CURVE_POINTS = 12
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class TierColumn:
    """One tier's triage of every ticket, and what the pre-gate and the gate's other rules say of it."""

    name: str
    predicted: Ints
    """Category code per ticket (an index into :attr:`CascadeData.categories`)."""
    confidence: Floats
    forced: Forced
    """Per ticket: kept (1) or escalated (-1) by the gate's other rules, or left to the threshold (0)."""
    skipped: Bools
    """Per ticket: the pre-gate skips this tier whatever the category (an image, suspected injection)."""
    serves: Bools | None
    """Per category code, whether this tier serves it; ``None``: every category."""
    call_usd: float
    """Estimated cost of this tier's call when it runs."""
    keep_usd: float = 0.0
    """Estimated cost added when this tier keeps a ticket (its drafting call)."""
    threshold: float = 0.0
    """The graph's current threshold for this tier (0.0 for the last tier)."""


@dataclass(frozen=True, slots=True)
class CascadeData:
    """Labelled tickets with every tier's prediction, as arrays; categories are coded once for all tiers."""

    labels: Ints
    categories: tuple[str, ...]
    tiers: tuple[TierColumn, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def gated(self) -> tuple[TierColumn, ...]:
        """The tiers whose threshold is fitted: all but the last."""
        return self.tiers[:-1]

    def subset(self, index: Sequence[int] | Ints) -> CascadeData:
        at = np.asarray(index, dtype=np.int64)
        return CascadeData(
            labels=self.labels[at],
            categories=self.categories,
            tiers=tuple(
                TierColumn(
                    name=t.name,
                    predicted=t.predicted[at],
                    confidence=t.confidence[at],
                    forced=t.forced[at],
                    skipped=t.skipped[at],
                    serves=t.serves,
                    call_usd=t.call_usd,
                    keep_usd=t.keep_usd,
                    threshold=t.threshold,
                )
                for t in self.tiers
            ),
        )

    @property
    def current(self) -> tuple[float, ...]:
        """The graph's thresholds, one per gated tier."""
        return tuple(t.threshold for t in self.gated)


def cascade_data(
    spec: GraphSpec,
    labels: Sequence[str],
    triages: Mapping[str, Sequence[Triage]],
    capabilities: Mapping[str, Capabilities],
    calls_usd: Mapping[str, float],
    *,
    has_images: Sequence[bool] | None = None,
) -> CascadeData:
    """Arrays for :func:`simulate` from each tier's triages (by tier name) and DATA's labels.

    ``capabilities`` by tier name; ``calls_usd`` as :meth:`triagegate.cost.Estimator.calls_usd`
    returns it. Each tier's forced routes come from its own gate (:func:`forced_routes`), its
    static pre-gate skips from :func:`triagegate.gate.pregate` with the ticket's screening
    flags (those its triage carries).
    """
    from triagegate.tuning.calibrate import forced_routes

    tiers = spec.tiers
    n = len(labels)
    images = list(has_images) if has_images is not None else [False] * n
    names = set(labels) | set(spec.taxonomy.category_names)
    for tier in tiers:
        if len(triages[tier.name]) != n:
            raise ValueError(f"tier {tier.name!r} has {len(triages[tier.name])} triages for {n} tickets")
        names.update(t.category for t in triages[tier.name])
    categories = tuple(sorted(names))
    code = {name: i for i, name in enumerate(categories)}
    columns = []
    for i, tier in enumerate(tiers):
        rows = triages[tier.name]
        caps = capabilities[tier.name]
        last = i == len(tiers) - 1
        open_tier = tier.model_copy(update={"categories": None})
        skipped = np.fromiter(
            (
                bool(pregate(TicketFacts(has_images=img, flags=tuple(t.flags)), open_tier, caps))
                for t, img in zip(rows, images, strict=True)
            ),
            dtype=np.bool_,
            count=n,
        )
        if last or tier.gate is None:
            forced = np.full(n, FORCED_KEEP, dtype=np.int8)
        else:
            forced = np.asarray(forced_routes(rows, tier.gate, mini_has_vision=caps.vision), dtype=np.int8)
        serves = None
        if tier.categories is not None:
            serves = np.fromiter((c in tier.categories for c in categories), dtype=np.bool_)
        drafts = tier.draft is not None and not caps.chat and not last
        columns.append(
            TierColumn(
                name=tier.name,
                predicted=np.fromiter((code[t.category] for t in rows), dtype=np.int64, count=n),
                confidence=np.fromiter((t.confidence for t in rows), dtype=np.float64, count=n),
                forced=forced,
                skipped=skipped & (not last),
                serves=None if last else serves,
                call_usd=float(calls_usd.get(tier.name, 0.0)),
                keep_usd=float(calls_usd.get(tier.name + DRAFT, 0.0)) if drafts else 0.0,
                threshold=0.0 if tier.gate is None else tier.gate.threshold,
            )
        )
    return CascadeData(
        labels=np.fromiter((code[label] for label in labels), dtype=np.int64, count=n),
        categories=categories,
        tiers=tuple(columns),
    )


@dataclass(frozen=True, slots=True)
class Route:
    """Where each ticket went under one set of thresholds."""

    answered_by: Ints
    """Index of the tier that answered each ticket."""
    correct: Bools
    usd: Floats
    reached: Bools
    """``reached[j, i]``: tier ``j`` ran for ticket ``i``."""


def simulate(data: CascadeData, thresholds: Sequence[float]) -> Route:
    """The cascade's route of every ticket with one threshold per gated tier (pure, vectorised)."""
    if len(thresholds) != len(data.gated):
        raise ValueError(f"{len(data.gated)} gated tiers but {len(thresholds)} thresholds")
    n = len(data)
    active = np.ones(n, dtype=np.bool_)
    category = np.full(n, -1, dtype=np.int64)
    answered_by = np.full(n, len(data.tiers) - 1, dtype=np.int64)
    answer = np.full(n, -1, dtype=np.int64)
    usd = np.zeros(n, dtype=np.float64)
    reached = np.zeros((len(data.tiers), n), dtype=np.bool_)
    last = len(data.tiers) - 1
    for j, tier in enumerate(data.tiers):
        runs = active if j == last else active & ~tier.skipped
        if tier.serves is not None:
            runs = runs & (category >= 0) & tier.serves[np.maximum(category, 0)]
        reached[j] = runs
        usd += np.where(runs, tier.call_usd, 0.0)
        category = np.where(runs, tier.predicted, category)
        if j == last:
            keep = runs
        else:
            free = tier.forced == THRESHOLD_DECIDES
            keep = runs & ((tier.forced == FORCED_KEEP) | (free & (tier.confidence >= thresholds[j])))
            usd += np.where(keep, tier.keep_usd, 0.0)
        answered_by = np.where(keep, j, answered_by)
        answer = np.where(keep, tier.predicted, answer)
        active = active & ~keep
    return Route(answered_by=answered_by, correct=answer == data.labels, usd=usd, reached=reached)


class TierShare(BaseModel):
    name: str
    reached: float
    """Share of all tickets this tier ran for."""
    answered: float
    """Share of all tickets this tier answered."""
    accuracy: float | None
    """Accuracy of this tier's answers; None when it answered none."""


class CascadePoint(BaseModel):
    """What the cascade does on a set of tickets at one threshold per gated tier."""

    thresholds: dict[str, float]
    tickets: int
    accuracy: float
    cost_per_1000: float
    last_share: float
    """Share of tickets reaching the last tier."""
    tiers: list[TierShare]


def point(data: CascadeData, thresholds: Sequence[float]) -> CascadePoint:
    """The :class:`CascadePoint` of ``thresholds`` on ``data``."""
    route = simulate(data, thresholds)
    n = len(data)
    shares = []
    for j, tier in enumerate(data.tiers):
        mine = route.answered_by == j
        count = int(mine.sum())
        shares.append(
            TierShare(
                name=tier.name,
                reached=float(route.reached[j].mean()) if n else 0.0,
                answered=count / n if n else 0.0,
                accuracy=float(route.correct[mine].mean()) if count else None,
            )
        )
    return CascadePoint(
        thresholds={t.name: float(v) for t, v in zip(data.gated, thresholds, strict=True)},
        tickets=n,
        accuracy=float(route.correct.mean()) if n else 0.0,
        cost_per_1000=float(route.usd.mean() * 1000) if n else 0.0,
        last_share=shares[-1].reached,
        tiers=shares,
    )


def last_tier_alone(data: CascadeData) -> CascadePoint:
    """Every ticket answered by the last tier alone (the all-flagship baseline)."""
    last = data.tiers[-1]
    n = len(data)
    right = last.predicted == data.labels
    return CascadePoint(
        thresholds={},
        tickets=n,
        accuracy=float(right.mean()) if n else 0.0,
        cost_per_1000=1000 * last.call_usd,
        last_share=1.0,
        tiers=[
            TierShare(name=last.name, reached=1.0, answered=1.0, accuracy=float(right.mean()) if n else None)
        ],
    )


@dataclass(frozen=True, slots=True)
class CascadeObjective:
    """The cheapest cascade whose answers are ``target_accuracy`` accurate, within the optional bounds."""

    target_accuracy: float
    max_last_share: float | None = None
    budget: float | None = None
    """USD per 1,000 tickets (estimated)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError(f"target accuracy must be between 0 and 1, got {self.target_accuracy}")
        if self.max_last_share is not None and not 0.0 <= self.max_last_share <= 1.0:
            raise ValueError(
                f"the share reaching the last tier must be between 0 and 1, got {self.max_last_share}"
            )
        if self.budget is not None and not (self.budget >= 0 and math.isfinite(self.budget)):
            raise ValueError(
                f"a budget must be a non-negative number of USD per 1,000 tickets, got {self.budget}"
            )

    def describe(self) -> str:
        parts = [f"cheapest cascade with answer accuracy >= {self.target_accuracy:.4g}"]
        if self.max_last_share is not None:
            parts.append(f"at most {100 * self.max_last_share:.4g}% of tickets reaching the last tier")
        if self.budget is not None:
            parts.append(f"at most ${self.budget:.4g} per 1,000 tickets")
        return ", ".join(parts)


def _candidates(tier: TierColumn, points: int) -> Floats:
    """0, up to ``points`` quantiles of the tier's threshold-decided confidences, and 1."""
    free = tier.confidence[tier.forced == THRESHOLD_DECIDES]
    values = np.unique(free)
    if values.size > points:
        index = np.round(np.linspace(0, values.size - 1, points)).astype(np.int64)
        values = values[index]
    out: Floats = np.unique(np.r_[0.0, values, 1.0])
    return out


@dataclass(slots=True)
class _Scores:
    """Accuracy, cost and last-tier share of every combination tried, for choosing and the curve."""

    combos: list[tuple[float, ...]]
    accuracy: list[float]
    cost: list[float]
    last: list[float]

    def add(self, data: CascadeData, combo: tuple[float, ...]) -> int:
        route = simulate(data, combo)
        self.combos.append(combo)
        self.accuracy.append(float(route.correct.mean()))
        self.cost.append(float(route.usd.mean() * 1000))
        self.last.append(float(route.reached[-1].mean()))
        return len(self.combos) - 1


def _feasible(objective: CascadeObjective, accuracy: float, cost: float, last: float) -> bool:
    return (
        accuracy >= objective.target_accuracy - _EPS
        and (objective.max_last_share is None or last <= objective.max_last_share + _EPS)
        and (objective.budget is None or cost <= objective.budget + 1e-9)
    )


def _key(objective: CascadeObjective, accuracy: float, cost: float, last: float) -> tuple[float, ...]:
    """Smaller is better: feasible first and cheapest; then the most accurate within the bounds;
    then the least over them (share first, then budget)."""
    if _feasible(objective, accuracy, cost, last):
        return (0.0, round(cost, 12), -accuracy, last)
    over_share = 0.0 if objective.max_last_share is None else max(0.0, last - objective.max_last_share - _EPS)
    over_budget = 0.0 if objective.budget is None else max(0.0, cost - objective.budget - 1e-9)
    if over_share == 0.0 and over_budget == 0.0:
        return (1.0, -accuracy, round(cost, 12), last)
    return (2.0, round(over_share, 12), round(over_budget, 12), -accuracy)


class CascadeFit(BaseModel):
    """The thresholds :func:`fit` chose, and what they do on the tickets they were fitted on."""

    thresholds: dict[str, float]
    feasible: bool
    """Whether every constraint of the objective is met on the fitted tickets."""
    description: str
    fitted: CascadePoint
    combinations: int
    """Threshold combinations evaluated."""
    frontier: list[tuple[float, ...]] = Field(default_factory=list)
    """Cheapest-for-its-accuracy combinations (the cascade's curve), cheapest first."""


def _nice(tier: TierColumn, threshold: float) -> float:
    """The shortest threshold keeping the same tickets of this tier as ``threshold`` (see ``nice_threshold``)."""
    values = np.unique(tier.confidence[tier.forced == THRESHOLD_DECIDES])
    below = values[values < threshold - 1e-15]
    at_or_above = values[values >= threshold]
    if threshold <= 0.0 or not below.size:
        return 0.0
    upper = float(at_or_above[0]) if at_or_above.size else 1.0
    return nice_threshold(float(below[-1]), min(upper, 1.0))


def fit(data: CascadeData, objective: CascadeObjective) -> CascadeFit:
    """One threshold per gated tier for ``objective`` on ``data`` (coarse grid, then per-tier refinement)."""
    gated = data.gated
    if not gated:
        raise ValueError("a cascade of one tier has no threshold to fit")
    m = len(gated)
    coarse = max(4, int(COARSE_COMBINATIONS ** (1 / m)))
    scores = _Scores([], [], [], [])
    seen: dict[tuple[float, ...], int] = {}

    def score(combo: tuple[float, ...]) -> int:
        if combo not in seen:
            seen[combo] = scores.add(data, combo)
        return seen[combo]

    def rank(i: int) -> tuple[float, ...]:
        return _key(objective, scores.accuracy[i], scores.cost[i], scores.last[i])

    grids = [_candidates(t, coarse) for t in gated]
    best = min((score(tuple(float(v) for v in c)) for c in itertools.product(*grids)), key=rank)
    fine = [_candidates(t, FINE_POINTS) for t in gated]
    for _ in range(REFINE_ROUNDS):
        before = best
        for j in range(m):
            for value in fine[j]:
                combo = list(scores.combos[best])
                combo[j] = float(value)
                i = score(tuple(combo))
                if rank(i) < rank(best):
                    best = i
        if best == before:
            break
    chosen = tuple(_nice(t, v) for t, v in zip(gated, scores.combos[best], strict=True))
    fitted = point(data, chosen)
    return CascadeFit(
        thresholds=fitted.thresholds,
        feasible=_feasible(objective, fitted.accuracy, fitted.cost_per_1000, fitted.last_share),
        description=objective.describe(),
        fitted=fitted,
        combinations=len(scores.combos),
        frontier=_frontier(scores),
    )


def _frontier(scores: _Scores, points: int = CURVE_POINTS) -> list[tuple[float, ...]]:
    """Up to ``points`` combinations on the accuracy-for-cost frontier, spread over its cost range."""
    order = sorted(range(len(scores.combos)), key=lambda i: (scores.cost[i], -scores.accuracy[i]))
    hull: list[int] = []
    for i in order:
        if not hull or scores.accuracy[i] > scores.accuracy[hull[-1]] + _EPS:
            hull.append(i)
    if len(hull) > points:
        pick = np.unique(np.round(np.linspace(0, len(hull) - 1, points)).astype(np.int64))
        hull = [hull[k] for k in pick]
    return [scores.combos[i] for i in hull]


class TierCurve(BaseModel):
    """One tier's selective curve among the tickets that reach it (earlier tiers at the given thresholds)."""

    name: str
    reached: int
    threshold: float
    at_threshold: CurvePoint | None
    curve: list[CurvePoint]


def tier_curves(
    data: CascadeData, thresholds: Sequence[float], points: int = CURVE_POINTS
) -> list[TierCurve]:
    """Each gated tier's selective curve (:func:`~triagegate.tuning.evaluation.selective_curve`) on
    the tickets that reach it and whose route its threshold decides, with the earlier tiers at
    ``thresholds``: what the tier would keep at each threshold of its own, and how accurately."""
    route = simulate(data, thresholds)
    out = []
    for j, tier in enumerate(data.gated):
        mask = route.reached[j] & (tier.forced == THRESHOLD_DECIDES)
        scored = [
            (data.categories[int(label)], data.categories[int(p)], float(c))
            for label, p, c in zip(
                data.labels[mask], tier.predicted[mask], tier.confidence[mask], strict=True
            )
        ]
        if not scored:
            out.append(
                TierCurve(name=tier.name, reached=0, threshold=thresholds[j], at_threshold=None, curve=[])
            )
            continue
        quantiles = np.quantile([c for _, _, c in scored], np.linspace(0, 1, points))
        curve = selective_curve(scored, [*(float(q) for q in quantiles), float(thresholds[j])])
        at = next(p for p in curve if p.threshold == float(thresholds[j]))
        out.append(
            TierCurve(
                name=tier.name,
                reached=int(route.reached[j].sum()),
                threshold=thresholds[j],
                at_threshold=at,
                curve=curve,
            )
        )
    return out
