"""Fitting the gate's thresholds to an objective, from scored tickets and price estimates.

Everything here is a pure function of arrays built from ``(true, predicted, confidence)``
triples (:class:`Tickets`), so fitting is cheap to test and needs no model. Three
objectives choose the operating point (:class:`Objective`):

* ``target_accuracy``: the most coverage whose kept tickets are at least this accurate;
* ``max_escalation``: the best kept accuracy escalating at most this share of tickets;
* ``budget``: the best accuracy of the whole system within USD per 1,000 tickets, where the
  flagship is assumed right on an escalated ticket with probability
  :attr:`Economics.flagship_accuracy` (1.0 unless measured or given: an assumption that
  flatters escalation, which is why it is reported next to every number it affects).

Thresholds are fitted on one part of the data and reported on another (the held-out
part), with a seeded percentile bootstrap interval for held-out coverage and kept accuracy,
because a threshold read off the data it is scored on always looks better than it is.

**Per-category thresholds** keep, for each predicted category with enough calibration
tickets (``min_support``), the most confident tickets of that category down to its own
threshold; categories with less support use the global threshold. They are chosen jointly
(:func:`fit_per_category`): every category's kept-count/correct-count curve is reduced to
its upper concave hull and hull segments are taken best first, which is the Lagrangian
solution of "keep the most tickets while total kept accuracy meets the target", then
refined within the first segment that no longer fits. The single global threshold is a
candidate of the same search, so the per-category policy is never worse on the
calibration data, which is exactly why that proves nothing: with a few dozen tickets per
category the search fits noise. :func:`calibrate` therefore uses per-category thresholds
only when they also win out of fold (K-fold cross-validation within the calibration part),
and the held-out numbers show whether they generalise.

The gate has rules besides confidence (hard rules, ``always_escalate``,
``never_escalate``). :attr:`Tickets.forced` carries their verdict per ticket (escalate,
keep, or let the threshold decide) so fitted thresholds account for what the gate does
anyway. Confidences are sorted once per fit; every candidate threshold is evaluated with
cumulative sums, so 10,000 tickets calibrate in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from triagegate.cost import CostEstimate
from triagegate.tuning.evaluation import Curve, Scored, build_curve, curve_thresholds

ObjectiveKind = Literal["target_accuracy", "max_escalation", "budget"]
FORCED_ESCALATE = -1
THRESHOLD_DECIDES = 0
FORCED_KEEP = 1
DEFAULT_MIN_SUPPORT = 30
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 13
CURVE_POINTS = 12
DEFAULT_FOLDS = 5
_EPS = 1e-9

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Forced = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class Objective:
    """What the fitted thresholds optimise; ``value`` is an accuracy, a share or USD per 1,000 tickets."""

    kind: ObjectiveKind
    value: float

    def __post_init__(self) -> None:
        if self.kind == "budget":
            if not (self.value >= 0 and math.isfinite(self.value)):
                raise ValueError(
                    f"a budget must be a non-negative number of USD per 1,000 tickets, got {self.value}"
                )
        elif not 0.0 <= self.value <= 1.0:
            raise ValueError(f"{self.kind} must be between 0 and 1, got {self.value}")

    def describe(self) -> str:
        if self.kind == "target_accuracy":
            return f"most coverage with kept accuracy >= {self.value:.4g}"
        if self.kind == "max_escalation":
            return f"best kept accuracy escalating at most {100 * self.value:.4g}% of tickets"
        return f"best overall accuracy within ${self.value:.4g} per 1,000 tickets"


@dataclass(frozen=True, slots=True)
class Economics:
    """Per-ticket cost of each route and how often the flagship is right on what it gets."""

    kept_usd: float = 0.0
    escalated_usd: float = 0.0
    flagship_accuracy: float = 1.0
    flagship_accuracy_source: str = "assumed: the flagship is taken to be right on every escalated ticket"

    def __post_init__(self) -> None:
        if not 0.0 <= self.flagship_accuracy <= 1.0:
            raise ValueError(f"flagship accuracy must be between 0 and 1, got {self.flagship_accuracy}")

    @classmethod
    def from_cost(
        cls, cost: CostEstimate | None, flagship_accuracy: float = 1.0, source: str | None = None
    ) -> Economics:
        kept, escalated = (cost.kept_usd, cost.escalated_usd) if cost is not None else (0.0, 0.0)
        if source is None:
            return cls(kept, escalated, flagship_accuracy)
        return cls(kept, escalated, flagship_accuracy, source)

    def cost_per_1000(self, coverage: float) -> float:
        return CostEstimate(kept_usd=self.kept_usd, escalated_usd=self.escalated_usd).per_1000(coverage)

    def system_accuracy(self, right_kept: float, kept: float, total: float) -> float:
        """Expected share answered correctly: the mini's hits plus the flagship's on the rest."""
        return (right_kept + self.flagship_accuracy * (total - kept)) / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Tickets:
    """Scored tickets as arrays; ``predicted`` indexes ``categories``.

    ``forced[i]`` is :data:`FORCED_ESCALATE` or :data:`FORCED_KEEP` when the gate routes
    ticket ``i`` whatever its confidence, else :data:`THRESHOLD_DECIDES`.
    """

    correct: Bools
    confidence: Floats
    predicted: Ints
    categories: tuple[str, ...]
    forced: Forced

    @classmethod
    def from_scored(cls, scored: Sequence[Scored], forced: Sequence[int] | None = None) -> Tickets:
        categories = tuple(sorted({p for _, p, _ in scored}))
        code = {name: i for i, name in enumerate(categories)}
        n = len(scored)
        flags = np.zeros(n, dtype=np.int8) if forced is None else np.asarray(forced, dtype=np.int8)
        if flags.shape != (n,):
            raise ValueError(f"{n} scored tickets but {flags.shape[0]} forced flags")
        if np.any((flags < FORCED_ESCALATE) | (flags > FORCED_KEEP)):
            raise ValueError("forced flags must be -1 (escalate), 0 (threshold decides) or 1 (keep)")
        confidence = np.fromiter((c for _, _, c in scored), dtype=np.float64, count=n)
        if np.any(~np.isfinite(confidence)) or np.any((confidence < 0) | (confidence > 1)):
            raise ValueError("confidences must be probabilities between 0 and 1")
        return cls(
            correct=np.fromiter((t == p for t, p, _ in scored), dtype=np.bool_, count=n),
            confidence=confidence,
            predicted=np.fromiter((code[p] for _, p, _ in scored), dtype=np.int64, count=n),
            categories=categories,
            forced=flags,
        )

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    def subset(self, index: Sequence[int] | Ints) -> Tickets:
        """The tickets at ``index`` (same category coding)."""
        at = np.asarray(index, dtype=np.int64)
        return Tickets(
            self.correct[at], self.confidence[at], self.predicted[at], self.categories, self.forced[at]
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds as the gate applies them: the category's own, else the global one."""

    threshold: float
    category_thresholds: Mapping[str, float] = field(default_factory=dict)

    def thresholds(self, tickets: Tickets) -> Floats:
        out = np.full(len(tickets), self.threshold, dtype=np.float64)
        for i, name in enumerate(tickets.categories):
            if name in self.category_thresholds:
                out[tickets.predicted == i] = self.category_thresholds[name]
        return out

    def kept(self, tickets: Tickets) -> Bools:
        """Which tickets the mini tier keeps under this policy and the gate's other rules."""
        free = tickets.forced == THRESHOLD_DECIDES
        by_threshold = free & (tickets.confidence >= self.thresholds(tickets))
        out: Bools = (tickets.forced == FORCED_KEEP) | by_threshold
        return out


class Interval(BaseModel):
    low: float
    high: float


class OperatingPoint(BaseModel):
    """What a policy does on a set of tickets; intervals are bootstrap percentiles when computed."""

    tickets: int
    kept: int
    coverage: float
    accuracy_kept: float | None
    """None when nothing is kept."""
    system_accuracy: float
    """Mini hits on kept tickets plus ``flagship_accuracy`` on escalated ones, over all tickets."""
    cost_per_1000: float
    coverage_ci: Interval | None = None
    accuracy_kept_ci: Interval | None = None


class FittedPolicy(BaseModel):
    threshold: float
    category_thresholds: dict[str, float] = Field(default_factory=dict)
    feasible: bool
    """Whether the objective's constraint is met on the calibration tickets."""
    calibration: OperatingPoint
    held_out: OperatingPoint


class CategoryFit(BaseModel):
    name: str
    support: int
    """Calibration tickets predicted as this category whose route the threshold decides."""
    threshold: float | None
    """Its own threshold, or None when it uses the global one (too little support, or the same value)."""


class IsoAccuracy(BaseModel):
    """Per-category thresholds versus one threshold, compared on the held-out tickets.

    ``single_coverage`` is the most a single threshold keeps at the per-category policy's
    held-out kept accuracy. That threshold is read off the held-out curve itself, choosing
    by correctness on the very tickets it is scored on, which favours it: ``coverage_gain``
    understates what per-category thresholds add. ``single_accuracy_at_coverage`` is the
    other way round and unbiased: the kept accuracy of the single threshold that keeps the
    same number of held-out tickets (chosen by confidence rank alone).
    """

    accuracy_kept: float
    per_category_coverage: float
    single_threshold: float | None
    single_coverage: float
    coverage_gain: float
    single_accuracy_at_coverage: float | None = None


class CrossValidation(BaseModel):
    """Out-of-fold operating points on the calibration tickets, for choosing between the two policies."""

    folds: int
    single: OperatingPoint
    per_category: OperatingPoint


class CurveRow(BaseModel):
    label: str
    threshold: float | None
    point: OperatingPoint


class CalibrationResult(BaseModel):
    objective: ObjectiveKind
    target: float
    description: str
    kept_usd: float
    escalated_usd: float
    flagship_accuracy: float
    flagship_accuracy_source: str
    calibration_tickets: int
    held_out_tickets: int
    resamples: int
    seed: int
    min_support: int
    single: FittedPolicy
    per_category: FittedPolicy | None = None
    categories: list[CategoryFit] = Field(default_factory=list)
    chosen: Literal["single", "per_category"] = "single"
    iso_accuracy: IsoAccuracy | None = None
    cross_validation: CrossValidation | None = None
    curve: list[CurveRow] = Field(default_factory=list)
    """The held-out curve of a single threshold, end points and chosen policies included."""
    calibration_curve: list[CurveRow] = Field(default_factory=list)
    fit_seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)

    @property
    def policy(self) -> FittedPolicy:
        """The policy to apply: per-category when it was fitted and chosen, else the single threshold."""
        return self.per_category if self.chosen == "per_category" and self.per_category else self.single


def nice_threshold(lower: float, upper: float) -> float:
    """The shortest decimal ``t`` in ``(lower, upper]`` clipped to [0, 1]: same tickets kept, readable.

    Every threshold in the interval keeps the same calibration tickets, so the shortest one
    is chosen for the graph file (``0.83`` rather than ``0.8329771``).
    """
    upper = min(upper, 1.0)
    if lower < 0.0:
        return 0.0
    if not lower < upper:
        raise ValueError(f"empty threshold interval ({lower}, {upper}]")
    for digits in range(0, 18):
        scale = 10.0**digits
        t = math.floor(upper * scale) / scale
        if lower < t <= upper:
            return t
    return upper


def _choose(
    objective: Objective,
    economics: Economics,
    kept: Ints,
    right: Ints,
    total: int,
    valid: Bools,
) -> tuple[int, bool]:
    """Index of the candidate the objective prefers, and whether it meets the constraint."""
    kept_f = kept.astype(np.float64)
    coverage = kept_f / total if total else np.zeros_like(kept_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(kept > 0, right / np.maximum(kept, 1), -1.0)
    indices = np.arange(kept.size)
    if objective.kind == "target_accuracy":
        feasible = valid & (kept > 0) & (right >= objective.value * kept_f - _EPS)
        if feasible.any():
            return int(indices[feasible][np.argmax(kept[feasible])]), True
        fallback = valid & (kept == kept[valid].min())
        return int(indices[fallback][0]), False
    if objective.kind == "max_escalation":
        least = math.ceil((1.0 - objective.value) * total - _EPS)
        feasible = valid & (kept >= least)
        if not feasible.any():
            return int(indices[valid][np.argmax(kept[valid])]), False
        pick = np.lexsort((-kept[feasible], -accuracy[feasible]))[0]
        return int(indices[feasible][pick]), True
    cost = 1000 * (coverage * economics.kept_usd + (1 - coverage) * economics.escalated_usd)
    system = (right + economics.flagship_accuracy * (total - kept_f)) / total if total else coverage
    feasible = valid & (cost <= objective.value + 1e-6)
    if not feasible.any():
        return int(indices[valid][np.argmin(cost[valid])]), False
    pick = np.lexsort((cost[feasible], -np.round(system[feasible], 12)))[0]
    return int(indices[feasible][pick]), True


def fit_single(
    tickets: Tickets, objective: Objective, economics: Economics | None = None
) -> tuple[Policy, bool]:
    """The one global threshold the objective prefers on ``tickets``, and whether it is feasible."""
    economics = economics or Economics()
    free = tickets.forced == THRESHOLD_DECIDES
    always = tickets.forced == FORCED_KEEP
    curve = build_curve(tickets.confidence[free], tickets.correct[free])
    kept = curve.kept + int(always.sum())
    right = curve.right + int((always & tickets.correct).sum())
    j, feasible = _choose(objective, economics, kept, right, len(tickets), curve.valid)
    return Policy(nice_threshold(float(curve.lower[j]), float(curve.upper[j]))), feasible


def accuracy_lower_bound(right: Ints, kept: Ints, confidence: float) -> Floats:
    """One-sided Clopper-Pearson lower bounds on accuracy for ``right`` hits out of ``kept`` tickets.

    The true accuracy of the population these tickets stand for is at least the bound with
    probability ``confidence`` (exact binomial bound, conservative). 0 where nothing is kept.
    """
    from scipy.stats import beta

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    right_f, kept_f = np.asarray(right, dtype=np.float64), np.asarray(kept, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = beta.ppf(1.0 - confidence, right_f, kept_f - right_f + 1.0)
    out: Floats = np.where((kept_f > 0) & (right_f > 0), np.nan_to_num(bound, nan=0.0), 0.0)
    return out


def fit_single_bounded(tickets: Tickets, target: float, confidence: float = 0.95) -> tuple[Policy, bool]:
    """The lowest threshold whose kept tickets are at least ``target`` accurate with ``confidence``.

    Like ``fit_single`` with a ``target_accuracy`` objective, but the kept tickets' accuracy
    must reach ``target`` as a one-sided lower confidence bound (:func:`accuracy_lower_bound`),
    not as the observed share. A threshold fitted to the observed share misses the target on
    new tickets about half the time; this one keeps a margin that shrinks as the number of
    kept tickets grows. Returns the policy and whether any threshold met the bound (when none
    does, the threshold keeps as few tickets as possible).
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target accuracy must be between 0 and 1, got {target}")
    free = tickets.forced == THRESHOLD_DECIDES
    always = tickets.forced == FORCED_KEEP
    curve = build_curve(tickets.confidence[free], tickets.correct[free])
    kept = curve.kept + int(always.sum())
    right = curve.right + int((always & tickets.correct).sum())
    bound = accuracy_lower_bound(right, kept, confidence)
    feasible = curve.valid & (kept > 0) & (bound >= target - _EPS)
    indices = np.arange(kept.size)
    if feasible.any():
        j = int(indices[feasible][np.argmax(kept[feasible])])
        ok = True
    else:
        j = int(indices[curve.valid & (kept == kept[curve.valid].min())][0])
        ok = False
    return Policy(nice_threshold(float(curve.lower[j]), float(curve.upper[j]))), ok


def _upper_hull(x: Ints, y: Floats, start: int) -> list[int]:
    """Indices (from ``start``) of the upper concave hull of points with increasing ``x``."""
    hull: list[int] = []
    for j in range(start, x.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[j] - x[a]) <= (y[j] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


@dataclass
class _Search:
    """The joint per-category search: one curve per supported category, the rest fixed."""

    names: list[str]
    curves: list[Curve]
    at: list[int]
    kept: int
    right: int

    def move(self, c: int, j: int) -> None:
        curve = self.curves[c]
        self.kept += int(curve.kept[j] - curve.kept[self.at[c]])
        self.right += int(curve.right[j] - curve.right[self.at[c]])
        self.at[c] = j

    def after(self, c: int, js: Ints) -> tuple[Ints, Ints]:
        """Totals (kept, right) if category ``c`` moved to each of ``js``."""
        curve = self.curves[c]
        return (
            self.kept - curve.kept[self.at[c]] + curve.kept[js],
            self.right - curve.right[self.at[c]] + curve.right[js],
        )

    def segments(self, tau: float) -> list[tuple[float, int, int, int]]:
        """Hull segments ``(slope, category, from, to)`` of ``right - tau * kept``, best first."""
        out = []
        for c, curve in enumerate(self.curves):
            margin = curve.right - tau * curve.kept
            hull = _upper_hull(curve.kept, margin, curve.first_valid)
            for a, b in pairwise(hull):
                slope = float(margin[b] - margin[a]) / float(curve.kept[b] - curve.kept[a])
                out.append((slope, c, a, b))
        out.sort(key=lambda s: (-s[0], s[1], s[2]))
        return out


def _search_target(search: _Search, target: float) -> bool:
    """Keep the most tickets while ``right >= target * kept``; True when that holds at the end."""
    for slope, c, a, b in search.segments(target):
        if search.at[c] != a:
            continue
        js = np.arange(a + 1, b + 1)
        kept, right = search.after(c, js)
        fits = right - target * kept >= -_EPS
        if slope >= 0 or fits[-1]:
            search.move(c, b)
        elif fits.any():
            search.move(c, int(js[fits][-1]))
    return search.kept > 0 and search.right - target * search.kept >= -_EPS


def _search_escalation(search: _Search, least: int) -> bool:
    """Reach ``least`` kept tickets taking the most accurate segments first."""
    for _, c, a, b in search.segments(0.0):
        if search.kept >= least:
            break
        if search.at[c] != a:
            continue
        js = np.arange(a + 1, b + 1)
        kept, _ = search.after(c, js)
        enough = kept >= least
        search.move(c, int(js[enough][0]) if enough.any() else b)
    return search.kept >= least


def _search_budget(search: _Search, flagship: float, least: int, most: int) -> bool:
    """Maximise hits minus ``flagship`` per kept ticket with ``least <= kept <= most``."""
    for slope, c, a, b in search.segments(flagship):
        if search.at[c] != a:
            continue
        if slope <= 0 and search.kept >= least:
            break
        js = np.arange(a + 1, b + 1)
        kept, _ = search.after(c, js)
        allowed = kept <= most
        if not allowed.any():
            continue
        if slope <= 0:
            enough = allowed & (kept >= least)
            search.move(c, int(js[enough][0]) if enough.any() else int(js[allowed][-1]))
        else:
            search.move(c, int(js[allowed][-1]))
    return least <= search.kept <= most


def fit_per_category(
    tickets: Tickets,
    objective: Objective,
    economics: Economics | None = None,
    *,
    global_threshold: float,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> tuple[Policy, bool, list[CategoryFit]]:
    """Per-category thresholds for categories with ``min_support`` tickets; the rest use ``global_threshold``.

    Returns the policy, whether it meets the objective's constraint on ``tickets``, and one
    :class:`CategoryFit` per predicted category. Categories whose fitted threshold equals
    the global one are left out of the policy's ``category_thresholds``. When the global
    threshold alone meets the objective and serves it at least as well, it is returned
    (without category thresholds), so the result is never worse on ``tickets``.
    """
    economics = economics or Economics()
    free = tickets.forced == THRESHOLD_DECIDES
    always = tickets.forced == FORCED_KEEP
    support = np.bincount(tickets.predicted[free], minlength=len(tickets.categories))
    supported = [i for i, s in enumerate(support) if s >= min_support]
    fixed = always | (
        free & ~np.isin(tickets.predicted, supported) & (tickets.confidence >= global_threshold)
    )
    search = _Search([], [], [], int(fixed.sum()), int((fixed & tickets.correct).sum()))
    for i in supported:
        mine = free & (tickets.predicted == i)
        curve = build_curve(tickets.confidence[mine], tickets.correct[mine])
        search.names.append(tickets.categories[i])
        search.curves.append(curve)
        search.at.append(curve.first_valid)
        search.kept += int(curve.kept[curve.first_valid])
        search.right += int(curve.right[curve.first_valid])
    n = len(tickets)
    if objective.kind == "target_accuracy":
        feasible = _search_target(search, objective.value)
    elif objective.kind == "max_escalation":
        feasible = _search_escalation(search, math.ceil((1.0 - objective.value) * n - _EPS))
    else:
        least, most = _budget_bounds(objective.value, economics, n)
        feasible = _search_budget(search, economics.flagship_accuracy, least, most)
    thresholds: dict[str, float] = {}
    for name, curve, j in zip(search.names, search.curves, search.at, strict=True):
        t = nice_threshold(float(curve.lower[j]), float(curve.upper[j]))
        if t != global_threshold:
            thresholds[name] = t
    single = Policy(global_threshold)
    single_point = operating_point(tickets, single.kept(tickets), economics)
    found_point = operating_point(tickets, Policy(global_threshold, thresholds).kept(tickets), economics)
    if _meets(objective, single_point) and (not feasible or _better(objective, single_point, found_point)):
        thresholds, feasible = {}, True
    fits = [
        CategoryFit(name=name, support=int(support[i]), threshold=thresholds.get(name))
        for i, name in enumerate(tickets.categories)
    ]
    return Policy(global_threshold, thresholds), feasible, fits


def _budget_bounds(budget: float, economics: Economics, n: int) -> tuple[int, int]:
    """Kept-ticket counts whose estimated cost is within ``budget`` per 1,000 tickets."""
    per_kept = economics.kept_usd - economics.escalated_usd
    base = 1000 * economics.escalated_usd
    if abs(per_kept) < 1e-15:
        return (0, n) if base <= budget + _EPS else (n + 1, -1)
    bound = (budget - base) / (1000 * per_kept) * n
    if per_kept < 0:
        return max(0, math.ceil(bound - 1e-6)), n
    return 0, min(n, math.floor(bound + 1e-6))


def _meets(objective: Objective, point: OperatingPoint) -> bool:
    """Whether ``point`` satisfies the objective's constraint."""
    if objective.kind == "target_accuracy":
        return point.accuracy_kept is not None and point.accuracy_kept >= objective.value - _EPS
    if objective.kind == "max_escalation":
        return point.tickets - point.kept <= objective.value * point.tickets + 1e-6
    return point.cost_per_1000 <= objective.value + 1e-6


def operating_point(tickets: Tickets, kept: Bools, economics: Economics) -> OperatingPoint:
    """Coverage, kept and system accuracy, and cost when ``kept`` tickets stay with the mini tier."""
    return _point(len(tickets), int(kept.sum()), int((kept & tickets.correct).sum()), economics)


def _point(n: int, kept: int, right: int, economics: Economics) -> OperatingPoint:
    coverage = kept / n if n else 0.0
    return OperatingPoint(
        tickets=n,
        kept=kept,
        coverage=coverage,
        accuracy_kept=right / kept if kept else None,
        system_accuracy=economics.system_accuracy(right, kept, n),
        cost_per_1000=economics.cost_per_1000(coverage),
    )


def bootstrap(
    correct: Bools,
    kept: Bools,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> tuple[Interval, Interval | None]:
    """Percentile intervals for coverage and kept accuracy over ``resamples`` seeded resamples.

    The kept-accuracy interval is None when no resample keeps a ticket.
    """
    n = int(kept.shape[0])
    if n == 0 or resamples < 1:
        raise ValueError("bootstrap needs tickets and at least one resample")
    rng = np.random.default_rng(seed)
    hits = kept & correct
    chunk = max(1, 2_000_000 // n)
    coverage: list[Floats] = []
    accuracy: list[Floats] = []
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        k = kept[index].sum(axis=1)
        r = hits[index].sum(axis=1)
        coverage.append(k / n)
        accuracy.append(np.where(k > 0, r / np.maximum(k, 1), np.nan))
    tail = 100 * (1 - level) / 2
    cov = np.concatenate(coverage)
    acc = np.concatenate(accuracy)
    cov_ci = Interval(low=float(np.percentile(cov, tail)), high=float(np.percentile(cov, 100 - tail)))
    acc = acc[~np.isnan(acc)]
    if acc.size == 0:
        return cov_ci, None
    return cov_ci, Interval(low=float(np.percentile(acc, tail)), high=float(np.percentile(acc, 100 - tail)))


def evaluate(
    policy: Policy,
    tickets: Tickets,
    economics: Economics,
    *,
    resamples: int = 0,
    seed: int = DEFAULT_SEED,
) -> OperatingPoint:
    """The policy's operating point on ``tickets``, with bootstrap intervals when ``resamples`` > 0."""
    kept = policy.kept(tickets)
    point = operating_point(tickets, kept, economics)
    if resamples > 0 and len(tickets):
        cov_ci, acc_ci = bootstrap(tickets.correct, kept, resamples=resamples, seed=seed)
        point = point.model_copy(update={"coverage_ci": cov_ci, "accuracy_kept_ci": acc_ci})
    return point


def single_coverage_at(tickets: Tickets, accuracy: float) -> tuple[float | None, float]:
    """The best single threshold on ``tickets`` keeping at least ``accuracy``: (threshold, coverage)."""
    policy, feasible = fit_single(tickets, Objective("target_accuracy", min(1.0, max(0.0, accuracy))))
    if not feasible:
        return None, 0.0
    kept = policy.kept(tickets)
    return policy.threshold, float(kept.sum()) / len(tickets) if len(tickets) else 0.0


def single_accuracy_at(tickets: Tickets, kept: int) -> float | None:
    """Kept accuracy of the single threshold keeping the fewest tickets that is at least ``kept`` (None if none)."""
    free = tickets.forced == THRESHOLD_DECIDES
    always = tickets.forced == FORCED_KEEP
    curve = build_curve(tickets.confidence[free], tickets.correct[free])
    totals = curve.kept + int(always.sum())
    reach = np.flatnonzero((totals >= kept) & curve.valid)
    if reach.size == 0 or totals[reach[0]] == 0:
        return None
    j = int(reach[0])
    return float(curve.right[j] + int((always & tickets.correct).sum())) / float(totals[j])


def curve_rows(
    tickets: Tickets,
    economics: Economics,
    *,
    points: int = CURVE_POINTS,
    marks: Mapping[str, Policy] | None = None,
) -> list[CurveRow]:
    """A thinned single-threshold curve plus the end points and ``marks`` (named policies).

    The thresholds are :func:`~triagegate.tuning.evaluation.curve_thresholds` of the
    confidences the threshold decides, as in ``eval``; the gate's other rules route the
    rest. ``all mini`` keeps every ticket and ``all flagship`` none, ignoring those rules:
    they bound what any gate can do.
    """
    free = tickets.forced == THRESHOLD_DECIDES
    always = tickets.forced == FORCED_KEEP
    thresholds = curve_thresholds(tickets.confidence[free], points=points)
    kept, right = build_curve(tickets.confidence[free], tickets.correct[free]).at(thresholds)
    n, always_kept, always_right = len(tickets), int(always.sum()), int((always & tickets.correct).sum())
    rows = [
        CurveRow(
            label="", threshold=t, point=_point(n, int(k) + always_kept, int(r) + always_right, economics)
        )
        for t, k, r in zip(thresholds, kept, right, strict=True)
    ]
    for label, policy in (marks or {}).items():
        threshold = None if policy.category_thresholds else policy.threshold
        rows.append(CurveRow(label=label, threshold=threshold, point=evaluate(policy, tickets, economics)))
    rows.append(
        CurveRow(label="all mini", threshold=None, point=_point(n, n, int(tickets.correct.sum()), economics))
    )
    rows.append(CurveRow(label="all flagship", threshold=None, point=_point(n, 0, 0, economics)))
    rows.sort(key=lambda r: (-r.point.coverage, r.label))
    return rows


def calibrate(
    calibration: Tickets,
    held_out: Tickets,
    objective: Objective,
    economics: Economics | None = None,
    *,
    per_category: bool = True,
    min_support: int = DEFAULT_MIN_SUPPORT,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    folds: int = DEFAULT_FOLDS,
) -> CalibrationResult:
    """Fit on ``calibration``, report on ``held_out``: the single threshold, per-category ones, the curve.

    ``held_out`` must use the same category coding as ``calibration`` (take both as
    :meth:`Tickets.subset` of one :class:`Tickets`). Per-category thresholds always look
    better on the tickets they were fitted on, so they are chosen only when they are
    feasible there and also win out of fold (:func:`cross_validate`, ``folds`` seeded folds
    of the calibration tickets); the held-out tickets play no part in any choice.
    """
    import time

    if calibration.categories != held_out.categories:
        raise ValueError(
            "calibration and held-out tickets must share one category coding (use Tickets.subset)"
        )
    if not len(calibration) or not len(held_out):
        raise ValueError("calibration needs tickets in both the calibration and the held-out part")
    started = time.perf_counter()
    economics = economics or Economics()
    single, single_ok = fit_single(calibration, objective, economics)

    def fitted(policy: Policy, feasible: bool) -> FittedPolicy:
        return FittedPolicy(
            threshold=policy.threshold,
            category_thresholds=dict(policy.category_thresholds),
            feasible=feasible,
            calibration=evaluate(policy, calibration, economics),
            held_out=evaluate(policy, held_out, economics, resamples=resamples, seed=seed),
        )

    result = CalibrationResult(
        objective=objective.kind,
        target=objective.value,
        description=objective.describe(),
        kept_usd=economics.kept_usd,
        escalated_usd=economics.escalated_usd,
        flagship_accuracy=economics.flagship_accuracy,
        flagship_accuracy_source=economics.flagship_accuracy_source,
        calibration_tickets=len(calibration),
        held_out_tickets=len(held_out),
        resamples=resamples,
        seed=seed,
        min_support=min_support,
        single=fitted(single, single_ok),
    )
    marks = {"fitted: single": single}
    if per_category:
        policy, ok, fits = fit_per_category(
            calibration, objective, economics, global_threshold=single.threshold, min_support=min_support
        )
        result.categories = fits
        if policy.category_thresholds:
            result.per_category = fitted(policy, ok)
            marks["fitted: per category"] = policy
            if not ok:
                result.notes.append(
                    "per-category thresholds are not used: they miss the objective when fitted"
                )
            elif folds < 2:
                if _better(objective, result.per_category.calibration, result.single.calibration):
                    result.chosen = "per_category"
            elif len(calibration) < 2 * folds:
                result.notes.append(
                    f"per-category thresholds are not used: too few calibration tickets for {folds}-fold validation"
                )
            else:
                cv = cross_validate(
                    calibration, objective, economics, folds=folds, seed=seed, min_support=min_support
                )
                result.cross_validation = cv
                if _better(objective, cv.per_category, cv.single):
                    result.chosen = "per_category"
                else:
                    result.notes.append(
                        f"per-category thresholds are not used: out of fold ({folds} folds of the calibration "
                        "tickets) they did not beat the single threshold"
                    )
            accuracy = result.per_category.held_out.accuracy_kept
            if accuracy is not None:
                threshold, coverage = single_coverage_at(held_out, accuracy)
                result.iso_accuracy = IsoAccuracy(
                    accuracy_kept=accuracy,
                    per_category_coverage=result.per_category.held_out.coverage,
                    single_threshold=threshold,
                    single_coverage=coverage,
                    coverage_gain=result.per_category.held_out.coverage - coverage,
                    single_accuracy_at_coverage=single_accuracy_at(
                        held_out, result.per_category.held_out.kept
                    ),
                )
        else:
            supported = sum(1 for c in fits if c.support >= min_support)
            result.notes.append(
                f"no category has its own threshold: none has {min_support} calibration tickets of its own"
                if not supported
                else f"no category has its own threshold: the {supported} with >= {min_support} calibration "
                "tickets fit the global threshold's value"
            )
    result.curve = curve_rows(held_out, economics, marks=marks)
    result.calibration_curve = curve_rows(calibration, economics, marks=marks)
    if not single_ok:
        result.notes.append(
            f"infeasible on the calibration tickets: no threshold gives {objective.describe()}"
        )
    result.fit_seconds = time.perf_counter() - started
    return result


def cross_validate(
    tickets: Tickets,
    objective: Objective,
    economics: Economics | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> CrossValidation:
    """Pooled out-of-fold points of both policies: each fold is routed by policies fitted on the others.

    ``min_support`` is scaled to the training folds' size, so the same categories qualify.
    """
    economics = economics or Economics()
    n = len(tickets)
    if folds < 2 or n < folds:
        raise ValueError(
            f"cross-validation needs at least 2 folds and a ticket per fold, got {folds} for {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    kept_single = np.zeros(n, dtype=np.bool_)
    kept_categories = np.zeros(n, dtype=np.bool_)
    support = max(1, math.ceil(min_support * (folds - 1) / folds))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        fitting, scoring = tickets.subset(train), tickets.subset(test)
        single, _ = fit_single(fitting, objective, economics)
        per_category, _, _ = fit_per_category(
            fitting, objective, economics, global_threshold=single.threshold, min_support=support
        )
        kept_single[test] = single.kept(scoring)
        kept_categories[test] = per_category.kept(scoring)
    return CrossValidation(
        folds=folds,
        single=operating_point(tickets, kept_single, economics),
        per_category=operating_point(tickets, kept_categories, economics),
    )


def _better(objective: Objective, candidate: OperatingPoint, incumbent: OperatingPoint) -> bool:
    """Whether ``candidate`` serves the objective better without giving up its constraint."""
    if objective.kind == "target_accuracy":
        floor = min(incumbent.accuracy_kept or 0.0, objective.value)
        return candidate.kept > incumbent.kept and (candidate.accuracy_kept or 0.0) >= floor - _EPS
    if objective.kind == "max_escalation":
        a, b = candidate.accuracy_kept or 0.0, incumbent.accuracy_kept or 0.0
        floor = min(incumbent.coverage, 1.0 - objective.value)
        return candidate.coverage >= floor - _EPS and (
            a > b + _EPS or (abs(a - b) <= _EPS and candidate.kept > incumbent.kept)
        )
    ceiling = max(incumbent.cost_per_1000, objective.value)
    return candidate.cost_per_1000 <= ceiling + _EPS and (
        candidate.system_accuracy > incumbent.system_accuracy + _EPS
        or (
            abs(candidate.system_accuracy - incumbent.system_accuracy) <= _EPS
            and candidate.cost_per_1000 < incumbent.cost_per_1000
        )
    )


def split_indices(n: int, calibration_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded ``(calibration, held_out)`` indices with :func:`triagegate.tuning.datasets.split`."""
    from triagegate.tuning.datasets import split

    if not 0.0 < calibration_fraction < 1.0:
        raise ValueError(
            f"the calibration fraction must be between 0 and 1 (exclusive), got {calibration_fraction}"
        )
    calibration, held_out = split(list(range(n)), 1.0 - calibration_fraction, seed)
    return sorted(calibration), sorted(held_out)
