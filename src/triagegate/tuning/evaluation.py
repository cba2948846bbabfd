"""Evaluation metrics as pure functions of scored tickets, and the report they make up.

Everything here works on ``scored``: a sequence of ``(true_label, predicted_label,
confidence)`` triples, however they were produced (a classifier, a chat model's log-probs,
a recording). Nothing reads files or calls models, so the functions are cheap to test and
to reuse: fitting per-category thresholds or bootstrapping confidence intervals only needs
to call them on resampled or filtered ``scored`` lists.

The **selective curve** answers the gate's question: if the mini tier keeps the tickets
whose confidence is at least ``t`` and escalates the rest, what share does it keep
(*coverage*), how accurate is it on those, and what does that cost per 1,000 tickets?
Costs are an *estimate* (:class:`triagegate.cost.CostEstimate`, from the graph's price table
and prompt lengths; see :mod:`triagegate.cost`). The curve itself is :class:`Curve`, which
``calibrate`` fits on too, so both commands draw one curve.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from triagegate.cost import CostEstimate

Scored = tuple[str, str, float]
"""``(true_label, predicted_label, confidence)`` for one ticket."""

CURVE_POINTS = 50
Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


class CategoryScore(BaseModel):
    label: str
    support: int
    """Tickets whose true label is ``label``."""
    predicted: int
    """Tickets predicted as ``label``."""
    precision: float
    recall: float
    f1: float


class CurvePoint(BaseModel):
    threshold: float | None
    """Confidence cut-off; None for a point that did not come from one threshold (the gate)."""
    kept: int
    escalated: int
    coverage: float
    """Share of tickets the mini tier keeps."""
    accuracy_kept: float | None
    """Accuracy on the kept tickets; None when none are kept."""
    accuracy_escalated: float | None
    """The mini tier's accuracy on the tickets it escalates (how much escalation catches)."""
    cost_per_1000: float | None = None
    """Estimated USD per 1,000 tickets at this point; None without a cost estimate."""


class EvalReport(BaseModel):
    """Everything ``triagegate eval`` measured, JSON-serialisable."""

    graph: str
    data: str
    triage_model: str
    tickets: int
    split: dict[str, float | int] | None = None
    trained_on_split: bool = False
    triage_errors: int = 0
    accuracy: float
    macro_f1: float
    threshold: float
    """The graph's global gate threshold."""
    at_threshold: CurvePoint
    """The curve at the graph's threshold: confidence alone decides."""
    gate: CurvePoint | None = None
    """What the graph's gate as configured decides (thresholds plus its escalation rules)."""
    gate_reasons: dict[str, int] = Field(default_factory=dict)
    """How often each escalation reason fired."""
    curve: list[CurvePoint]
    per_category: list[CategoryScore]
    cost: CostEstimate | None = None
    seconds: float = 0.0
    triage_ms_per_ticket: float = 0.0
    notes: list[str] = Field(default_factory=list)


def accuracy(scored: Sequence[Scored]) -> float:
    """Share of tickets predicted correctly (0.0 for no tickets)."""
    if not scored:
        return 0.0
    return sum(1 for t, p, _ in scored if t == p) / len(scored)


def per_category(scored: Sequence[Scored]) -> list[CategoryScore]:
    """Precision, recall and F1 per label (every label seen as true or predicted), by name.

    A label never predicted has precision 0; one never true has recall 0 (so a spurious
    prediction of an unknown label costs macro-F1, as it should).
    """
    true = Counter(t for t, _, _ in scored)
    pred = Counter(p for _, p, _ in scored)
    hits = Counter(t for t, p, _ in scored if t == p)
    out = []
    for label in sorted(set(true) | set(pred)):
        precision = hits[label] / pred[label] if pred[label] else 0.0
        recall = hits[label] / true[label] if true[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(
            CategoryScore(
                label=label,
                support=true[label],
                predicted=pred[label],
                precision=precision,
                recall=recall,
                f1=f1,
            )
        )
    return out


def macro_f1(scored: Sequence[Scored]) -> float:
    """Unweighted mean F1 over every label seen as true or predicted (0.0 for no tickets)."""
    scores = per_category(scored)
    return sum(s.f1 for s in scores) / len(scores) if scores else 0.0


@dataclass(frozen=True, slots=True)
class Curve:
    """Every way one confidence threshold splits a set of tickets: keep the ``kept[j]`` most confident.

    The one selective curve behind ``eval`` (:func:`selective_curve`) and ``calibrate``
    (:mod:`triagegate.tuning.calibration` fits on it and draws its curves from it). A
    threshold in ``(lower[j], upper[j]]`` keeps exactly candidate ``j``; ``j == 0`` keeps
    none and the last candidate keeps all. Ties share a candidate, since no threshold
    separates equal confidences. ``right[j]`` is how many of those kept are correct.
    """

    kept: Ints
    right: Ints
    lower: Floats
    upper: Floats

    @property
    def valid(self) -> Bools:
        """Candidates some threshold in [0, 1] reaches (keeping none is impossible at confidence 1)."""
        out: Bools = self.lower < 1.0
        return out

    @property
    def first_valid(self) -> int:
        return int(np.argmax(self.valid))

    def at(self, thresholds: Sequence[float] | Floats) -> tuple[Ints, Ints]:
        """``(kept, right)`` per threshold when the tickets with ``confidence >= threshold`` are kept."""
        groups = -self.upper[1:]
        j = np.searchsorted(groups, -np.asarray(thresholds, dtype=np.float64), side="right")
        return self.kept[j], self.right[j]


def build_curve(confidence: Floats, correct: Bools) -> Curve:
    """The :class:`Curve` of tickets with these confidences and correctness (sorted once)."""
    order = np.argsort(-confidence, kind="stable")
    values, hits = confidence[order], correct[order]
    if values.size == 0:
        zero = np.zeros(1, dtype=np.int64)
        return Curve(zero, zero, np.array([-np.inf]), np.array([np.inf]))
    ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])
    cumulative = np.cumsum(hits, dtype=np.int64)
    group_values = values[ends]
    return Curve(
        kept=np.r_[0, ends + 1].astype(np.int64),
        right=np.r_[0, cumulative[ends]].astype(np.int64),
        lower=np.r_[group_values, -np.inf],
        upper=np.r_[np.inf, group_values],
    )


def curve_thresholds(
    confidences: Iterable[float] | Floats, *, points: int = CURVE_POINTS, include: Iterable[float] = ()
) -> list[float]:
    """Sorted distinct thresholds: 0, ``points`` evenly spaced quantiles of ``confidences``, and ``include``.

    The quantiles are nearest-rank (observed confidences), so each threshold keeps the
    ticket it came from.
    """
    values = np.sort(np.fromiter(confidences, dtype=np.float64))
    found = {0.0, *(float(t) for t in include)}
    if values.size:
        q = np.arange(points) / (points - 1) if points > 1 else np.ones(1)
        index = np.minimum(values.size - 1, np.round(q * (values.size - 1)).astype(np.int64))
        found.update(float(v) for v in values[index])
    return sorted(found)


def _arrays(scored: Sequence[Scored]) -> tuple[Floats, Bools]:
    n = len(scored)
    confidence = np.fromiter((c for _, _, c in scored), dtype=np.float64, count=n)
    correct = np.fromiter((t == p for t, p, _ in scored), dtype=np.bool_, count=n)
    return confidence, correct


def _point(
    threshold: float | None, n: int, kept: int, right_kept: int, right: int, cost: CostEstimate | None
) -> CurvePoint:
    escalated = n - kept
    coverage = kept / n if n else 0.0
    return CurvePoint(
        threshold=threshold,
        kept=kept,
        escalated=escalated,
        coverage=coverage,
        accuracy_kept=right_kept / kept if kept else None,
        accuracy_escalated=(right - right_kept) / escalated if escalated else None,
        cost_per_1000=cost.per_1000(coverage) if cost is not None else None,
    )


def point_for_mask(
    scored: Sequence[Scored], kept: Sequence[bool], cost: CostEstimate | None = None
) -> CurvePoint:
    """Coverage, accuracies and cost when the tickets with ``kept[i]`` true stay with the mini tier."""
    if len(kept) != len(scored):
        raise ValueError(f"{len(scored)} scored tickets but {len(kept)} keep flags")
    _, correct = _arrays(scored)
    mask = np.fromiter(kept, dtype=np.bool_, count=len(kept))
    return _point(None, len(scored), int(mask.sum()), int((mask & correct).sum()), int(correct.sum()), cost)


def point_at(scored: Sequence[Scored], threshold: float, cost: CostEstimate | None = None) -> CurvePoint:
    """The curve's point at ``threshold``: keep tickets with ``confidence >= threshold``."""
    return selective_curve(scored, [threshold], cost)[0]


def selective_curve(
    scored: Sequence[Scored],
    thresholds: Iterable[float] | None = None,
    cost: CostEstimate | None = None,
    *,
    include: Iterable[float] = (),
) -> list[CurvePoint]:
    """One :class:`CurvePoint` per threshold, in increasing threshold order.

    Without ``thresholds`` they come from :func:`curve_thresholds` (quantiles of the
    confidences plus ``include``, e.g. the graph's threshold). Coverage never increases
    along the curve.
    """
    confidence, correct = _arrays(scored)
    chosen = (
        sorted(set(thresholds)) if thresholds is not None else curve_thresholds(confidence, include=include)
    )
    kept, right_kept = build_curve(confidence, correct).at(chosen)
    n, right = len(scored), int(correct.sum())
    return [
        _point(t, n, int(k), int(r), right, cost) for t, k, r in zip(chosen, kept, right_kept, strict=True)
    ]


def threshold_for_accuracy(
    scored: Sequence[Scored], target: float, thresholds: Iterable[float] | None = None
) -> CurvePoint | None:
    """The lowest threshold (most coverage) whose kept accuracy is at least ``target``, or None.

    Only the thresholds on the curve are tried; pass ``thresholds`` to search a finer grid.
    Fit it on data other than the data you report on, or the result flatters the model.
    """
    for point in selective_curve(scored, thresholds):
        if point.kept and point.accuracy_kept is not None and point.accuracy_kept >= target:
            return point
    return None


def build_report(
    scored: Sequence[Scored],
    *,
    graph: str,
    data: str,
    triage_model: str,
    threshold: float,
    cost: CostEstimate | None = None,
    gate_kept: Sequence[bool] | None = None,
    gate_reasons: Mapping[str, int] | None = None,
    **extra: object,
) -> EvalReport:
    """Assemble an :class:`EvalReport` from scored tickets (and the gate's decisions, when known)."""
    return EvalReport.model_validate(
        {
            "graph": graph,
            "data": data,
            "triage_model": triage_model,
            "tickets": len(scored),
            "accuracy": accuracy(scored),
            "macro_f1": macro_f1(scored),
            "threshold": threshold,
            "at_threshold": point_at(scored, threshold, cost),
            "gate": point_for_mask(scored, gate_kept, cost) if gate_kept is not None else None,
            "gate_reasons": dict(gate_reasons or {}),
            "curve": selective_curve(scored, cost=cost, include=[threshold]),
            "per_category": per_category(scored),
            "cost": cost,
            **extra,
        }
    )
