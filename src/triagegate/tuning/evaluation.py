"""Evaluation metrics as pure functions of scored tickets, and the report they make up.

Everything here works on ``scored``: a sequence of ``(true_label, predicted_label,
confidence)`` triples, however they were produced (a classifier, a chat model's log-probs,
a recording). Nothing reads files or calls models, so the functions are cheap to test and
to reuse: fitting per-category thresholds or bootstrapping confidence intervals only needs
to call them on resampled or filtered ``scored`` lists.

The **selective curve** answers the gate's question: if the mini tier keeps the tickets
whose confidence is at least ``t`` and escalates the rest, what share does it keep
(*coverage*), how accurate is it on those, and what does that cost per 1,000 tickets?
Costs come from :func:`estimate_costs`, which is an *estimate* from the graph's price table
and token counts guessed from text length (4 characters per token) with each node's
``max_tokens`` as the output length, an upper bound.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, Field

from triagegate.spec import GraphSpec

Scored = tuple[str, str, float]
"""``(true_label, predicted_label, confidence)`` for one ticket."""

CHARS_PER_TOKEN = 4
CURVE_POINTS = 50


class CategoryScore(BaseModel):
    label: str
    support: int
    """Tickets whose true label is ``label``."""
    predicted: int
    """Tickets predicted as ``label``."""
    precision: float
    recall: float
    f1: float


class CostEstimate(BaseModel):
    """Estimated USD per ticket on each route, and the assumptions behind the numbers."""

    kept_usd: float
    """Mini triage, plus drafting when the triage model cannot write the answer itself."""
    escalated_usd: float
    """Mini triage plus the flagship's escalation call."""
    tokens: dict[str, tuple[int, int]] = Field(default_factory=dict)
    """``{node: (input_tokens, output_tokens)}`` assumed per call."""
    basis: str = ""


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


def curve_thresholds(
    confidences: Iterable[float], *, points: int = CURVE_POINTS, include: Iterable[float] = ()
) -> list[float]:
    """Sorted distinct thresholds: 0, ``points`` evenly spaced quantiles of ``confidences``, and ``include``."""
    values = sorted(confidences)
    found = {0.0, *include}
    if values:
        for i in range(points):
            q = i / (points - 1) if points > 1 else 1.0
            found.add(values[min(len(values) - 1, round(q * (len(values) - 1)))])
    return sorted(found)


def point_for_mask(
    scored: Sequence[Scored], kept: Sequence[bool], cost: CostEstimate | None = None
) -> CurvePoint:
    """Coverage, accuracies and cost when the tickets with ``kept[i]`` true stay with the mini tier."""
    if len(kept) != len(scored):
        raise ValueError(f"{len(scored)} scored tickets but {len(kept)} keep flags")
    n_kept = right_kept = right_escalated = 0
    for (t, p, _), keep in zip(scored, kept, strict=True):
        if keep:
            n_kept += 1
            right_kept += t == p
        else:
            right_escalated += t == p
    n = len(scored)
    n_escalated = n - n_kept
    coverage = n_kept / n if n else 0.0
    return CurvePoint(
        threshold=None,
        kept=n_kept,
        escalated=n_escalated,
        coverage=coverage,
        accuracy_kept=right_kept / n_kept if n_kept else None,
        accuracy_escalated=right_escalated / n_escalated if n_escalated else None,
        cost_per_1000=cost_per_1000(coverage, cost) if cost is not None else None,
    )


def point_at(scored: Sequence[Scored], threshold: float, cost: CostEstimate | None = None) -> CurvePoint:
    """The curve's point at ``threshold``: keep tickets with ``confidence >= threshold``."""
    point = point_for_mask(scored, [c >= threshold for _, _, c in scored], cost)
    return point.model_copy(update={"threshold": threshold})


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
    chosen = (
        sorted(set(thresholds))
        if thresholds is not None
        else curve_thresholds((c for _, _, c in scored), include=include)
    )
    return [point_at(scored, t, cost) for t in chosen]


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


def cost_per_1000(coverage: float, cost: CostEstimate) -> float:
    """Estimated USD for 1,000 tickets when ``coverage`` of them stay with the mini tier."""
    return 1000 * (coverage * cost.kept_usd + (1 - coverage) * cost.escalated_usd)


def _tokens(chars: float) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def estimate_costs(
    spec: GraphSpec,
    *,
    mean_text_chars: float,
    overhead_chars: Mapping[str, int],
    triage_drafts: bool,
    triage_is_model: bool = True,
) -> CostEstimate:
    """Per-ticket cost on each route from the graph's prices.

    ``overhead_chars`` is each node's prompt length without the ticket (``triage``,
    ``answer``, ``escalate``). Input tokens are ``(overhead + mean ticket length) / 4``;
    output tokens are the node's ``max_tokens``. ``triage_drafts`` says the triage call
    writes the answer itself (a chat model), so kept tickets make no drafting call;
    ``triage_is_model`` False (a local classifier) counts no triage tokens at all.
    """
    nodes = spec.nodes
    tokens: dict[str, tuple[int, int]] = {}
    usd: dict[str, float] = {}
    for name in ("triage", "answer", "escalate"):
        node = getattr(nodes, name)
        if name == "triage" and not triage_is_model:
            tokens[name] = (0, 0)
        else:
            tokens[name] = (_tokens(overhead_chars.get(name, 0) + mean_text_chars), node.max_tokens)
        usd[name] = spec.models[node.model].price.cost(*tokens[name])
    kept = usd["triage"] + (0.0 if triage_drafts else usd["answer"])
    basis = (
        f"estimate: input tokens = (prompt overhead + mean ticket of {mean_text_chars:.0f} chars) / {CHARS_PER_TOKEN}; "
        "output tokens = each node's max_tokens (an upper bound); prices from the graph's models"
    )
    if triage_drafts:
        tokens.pop("answer", None)
    return CostEstimate(
        kept_usd=kept, escalated_usd=usd["triage"] + usd["escalate"], tokens=tokens, basis=basis
    )


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
