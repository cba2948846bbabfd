"""The report's figures as pure functions: Wilson intervals, PSI, label precedence, alerts, cost."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triagegate.store import GraphInfo, Label, Snapshot, StoredOutcome
from triagegate.tuning.monitoring import (
    PSI_SHIFT,
    build_report,
    label_of,
    psi,
    reference_histogram,
    series,
    wilson,
)
from triagegate.types import GateDecision, NodeRun, Outcome, ShadowCheck


@given(st.integers(min_value=1, max_value=5000), st.data())
def test_the_wilson_interval_holds_the_estimate_inside_zero_and_one(n: int, data: st.DataObject) -> None:
    right = data.draw(st.integers(min_value=0, max_value=n))
    p = wilson(right, n)
    assert p.low is not None and p.high is not None and p.precision is not None
    assert 0.0 <= p.low <= p.precision <= p.high <= 1.0


def test_the_wilson_interval_matches_known_values_and_narrows_with_more_labels() -> None:
    p = wilson(81, 100)
    assert (p.low, p.high) == (pytest.approx(0.7222, abs=1e-4), pytest.approx(0.8749, abs=1e-4))
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0
    assert wilson(900, 1000).high - wilson(900, 1000).low < p.high - p.low  # type: ignore[operator]
    assert wilson(0, 0).precision is None


def test_psi_is_zero_for_the_reference_itself_and_grows_with_a_shift() -> None:
    confident = [0.5 + 0.5 * i / 999 for i in range(1000)]
    ref = reference_histogram("g", "mini", confident)
    assert math.isclose(sum(ref.shares), 1.0) and ref.edges[0] == 0.0 and ref.edges[-1] > 1.0
    assert psi(ref, confident) == pytest.approx(0.0, abs=1e-9)
    lower = [c - 0.3 for c in confident]
    assert psi(ref, lower) > PSI_SHIFT  # type: ignore[operator]
    assert psi(ref, []) is None


def test_a_human_label_outranks_a_shadow_label() -> None:
    labels = [
        Label(ticket_id="t", source="shadow", label="a"),
        Label(ticket_id="t", source="human", label="b"),
        Label(ticket_id="u", source="shadow", label="c"),
    ]
    assert {k: v.label for k, v in label_of(labels).items()} == {"t": "b", "u": "c"}


def kept(i: int, category: str, confidence: float = 0.9) -> Outcome:
    return Outcome(
        ticket_id=f"t-{i}",
        run_id="r",
        graph="g",
        graph_hash="h",
        route="mini",
        category=category,
        decisions=[GateDecision(tier="mini", route="keep", confidence=confidence, threshold=0.8)],
        nodes=[NodeRun(node="mini", cost_usd=0.001)],
        cost_usd=0.001,
        shadow=ShadowCheck(tier="mini", judge="flagship", status="scheduled"),
    )


def escalated(i: int) -> Outcome:
    return Outcome(
        ticket_id=f"e-{i}",
        run_id="r",
        graph="g",
        graph_hash="h",
        route="flagship",
        category="billing",
        decisions=[
            GateDecision(
                tier="mini", route="escalate", confidence=0.3, threshold=0.8, reasons=["low_confidence"]
            )
        ],
        nodes=[NodeRun(node="mini", cost_usd=0.001), NodeRun(node="flagship", cost_usd=0.02)],
        cost_usd=0.021,
    )


def snapshot(right: int, wrong: int, *, target: float | None = 0.9) -> Snapshot:
    outcomes = [kept(i, "billing") for i in range(right + wrong)] + [escalated(i) for i in range(10)]
    labels = [
        Label(ticket_id=f"t-{i}", source="shadow", label="billing", cost_usd=0.02) for i in range(right)
    ]
    labels += [
        Label(ticket_id=f"t-{i}", source="shadow", label="refund", acceptable=False)
        for i in range(right, right + wrong)
    ]
    targets = {"mini": target} if target is not None else {}
    return Snapshot(
        outcomes=[StoredOutcome(created_at=float(i), outcome=o) for i, o in enumerate(outcomes)],
        labels=labels,
        graphs=[GraphInfo(graph_hash="h", graph="g", tiers=["mini", "flagship"], targets=targets)],
    )


def test_the_report_counts_kept_shares_precision_and_cost() -> None:
    report = build_report(snapshot(right=90, wrong=0))
    mini, flagship = report.tiers
    assert report.tickets == 100 and mini.kept == 90 and mini.share == pytest.approx(0.9)
    assert flagship.share == pytest.approx(0.1) and flagship.precision is None
    assert mini.precision is not None and mini.precision.precision == 1.0 and mini.precision.labelled == 90
    assert mini.by_category["billing"].right == 90
    assert not mini.alert and report.alerts == []
    assert report.cost.usd == pytest.approx(90 * 0.001 + 10 * 0.021)
    assert report.cost.all_flagship_usd == pytest.approx(100 * 0.02)
    assert report.cost.shadow_usd == pytest.approx(90 * 0.02)
    assert mini.shadow_scheduled == 90


def test_the_report_alerts_when_the_lower_bound_falls_under_the_target() -> None:
    report = build_report(snapshot(right=80, wrong=10))
    mini = report.tiers[0]
    assert mini.alert and mini.precision is not None and mini.precision.low < 0.9  # type: ignore[operator]
    assert any("under the target 0.9" in a for a in report.alerts)
    assert mini.acceptable is not None and mini.acceptable.labelled == 10 and mini.acceptable.right == 0
    assert not build_report(snapshot(right=80, wrong=10, target=None)).tiers[0].alert
    assert (
        build_report(snapshot(right=80, wrong=10, target=None), targets={"mini": 0.5}).tiers[0].alert is False
    )


def test_the_series_splits_the_window_into_spans() -> None:
    points = series(snapshot(right=90, wrong=0), buckets=4)
    assert len(points) == 4 and sum(p.tickets for p in points) == 100
    assert points[-1].escalation == pytest.approx(10 / 25)
    assert points[0].precision.labelled == 25
