from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triagegate.cost import CostEstimate, Estimator, tokens_for_chars
from triagegate.models.base import Capabilities
from triagegate.prompts import load_graph_templates
from triagegate.replies import escalate_request, triage_request
from triagegate.spec import load_spec
from triagegate.tuning.evaluation import (
    EvalReport,
    Scored,
    accuracy,
    build_report,
    curve_thresholds,
    macro_f1,
    per_category,
    point_at,
    point_for_mask,
    selective_curve,
    threshold_for_accuracy,
)
from triagegate.types import Ticket, Triage

GRAPHS = Path(__file__).parent.parent / "graphs"

# Worked by hand: 3 of 5 right; a: P=1/2 R=1/2; b: P=2/3 R=1 (F1 0.8); c never predicted (F1 0).
SCORED: list[Scored] = [("a", "a", 0.9), ("a", "b", 0.8), ("b", "b", 0.7), ("b", "b", 0.4), ("c", "a", 0.3)]
COST = CostEstimate(kept_usd=0.001, escalated_usd=0.01)


def test_accuracy_and_macro_f1_by_hand() -> None:
    assert accuracy(SCORED) == pytest.approx(0.6)
    scores = {s.label: s for s in per_category(SCORED)}
    assert (scores["a"].precision, scores["a"].recall, scores["a"].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (scores["b"].precision, scores["b"].recall, scores["b"].f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (scores["c"].support, scores["c"].predicted, scores["c"].f1) == (1, 0, 0.0)
    assert macro_f1(SCORED) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert accuracy([]) == 0.0 and macro_f1([]) == 0.0


def test_point_at_threshold_by_hand() -> None:
    p = point_at(SCORED, 0.5, COST)
    assert (p.kept, p.escalated) == (3, 2) and p.coverage == pytest.approx(0.6)
    assert p.accuracy_kept == pytest.approx(2 / 3) and p.accuracy_escalated == pytest.approx(0.5)
    assert p.cost_per_1000 == pytest.approx(1000 * (0.6 * 0.001 + 0.4 * 0.01))
    none_kept = point_at(SCORED, 0.95)
    assert none_kept.kept == 0 and none_kept.accuracy_kept is None and none_kept.cost_per_1000 is None


def test_point_for_mask_and_length_check() -> None:
    p = point_for_mask(SCORED, [True, False, False, False, True])
    assert p.threshold is None and p.kept == 2 and p.accuracy_kept == pytest.approx(0.5)
    with pytest.raises(ValueError):
        point_for_mask(SCORED, [True])


def test_thresholds_include_graph_threshold_and_zero() -> None:
    ts = curve_thresholds([c for _, _, c in SCORED], include=[0.65])
    assert ts == sorted(set(ts)) and ts[0] == 0.0 and 0.65 in ts and 0.9 in ts
    assert len(curve_thresholds([i / 1000 for i in range(1000)])) == 50


def test_threshold_for_accuracy() -> None:
    best = threshold_for_accuracy(SCORED, 1.0)
    assert best is not None and best.threshold == 0.9 and best.kept == 1
    assert threshold_for_accuracy([("a", "b", 0.9)], 0.5) is None


def _prompt_tokens(messages: tuple[object, ...]) -> int:
    return tokens_for_chars(sum(len(getattr(m, "text", "")) for m in messages))


def test_route_costs_from_price_table() -> None:
    """eval's and calibrate's estimate: prompt characters / 4 in, max_tokens out, the graph's prices."""
    loaded = load_spec(GRAPHS / "scripted.yaml")  # mini 1/2 USD per M tokens, flagship 10/20, max_tokens 512
    spec, templates = loaded.spec, load_graph_templates(loaded)
    ticket = Ticket(text="y" * 100)
    draft = Triage(
        category="billing",
        priority=spec.taxonomy.default_priority,
        confidence=0.5,
        confidence_method="verbalized",
    )
    triage_in = _prompt_tokens(
        triage_request(templates["mini"], spec, ticket, [], Capabilities(), spec.tier("mini")).messages
    )
    escalate_in = _prompt_tokens(
        escalate_request(templates["flagship"], spec, ticket, draft, [], spec.tier("flagship")).messages
    )
    chat = Estimator(spec, templates, triage=Capabilities(chat=True)).routes(100)
    assert chat.tokens == {"mini": (triage_in, 512), "flagship": (escalate_in + 512, 512)}
    assert chat.kept_usd == pytest.approx((triage_in * 1 + 512 * 2) / 1e6)
    assert chat.escalated_usd == pytest.approx((triage_in + 1024 + (escalate_in + 512) * 10 + 512 * 20) / 1e6)
    assert "estimate" in chat.basis and "/ 4" in chat.basis

    local = Estimator(spec, templates, triage=Capabilities(chat=False, classify=True)).routes(100)
    assert local.tokens["mini"] == (0, 0) and local.tokens["flagship"] == (escalate_in, 512)
    answer_in, answer_out = local.tokens["mini:draft"]
    assert answer_out == 512 and local.kept_usd == pytest.approx((answer_in + 1024) / 1e6)
    assert local.escalated_usd == pytest.approx((escalate_in * 10 + 512 * 20) / 1e6)


def test_one_estimate_for_batch_tickets_and_eval_routes() -> None:
    """A batch ticket and eval's mean ticket of the same length cost the same on both routes."""
    loaded = load_spec(GRAPHS / "scripted.yaml")
    spec, templates = loaded.spec, load_graph_templates(loaded)
    for caps in (Capabilities(chat=True), Capabilities(chat=False, classify=True)):
        estimator = Estimator(spec, templates, triage=caps)
        ticket = Ticket(text="where is my parcel? " * 7)
        one, routes = estimator.ticket(ticket), estimator.routes(len(ticket.text))
        assert one.mini_usd == pytest.approx(routes.kept_usd)
        assert one.escalated_usd == pytest.approx(routes.escalated_usd)


def test_an_escalated_classifier_ticket_is_not_charged_a_draft() -> None:
    """Regression: batch's estimate charged an escalated ticket the drafting call it never makes."""
    loaded = load_spec(GRAPHS / "scripted.yaml")
    spec, templates = loaded.spec, load_graph_templates(loaded)
    estimate = Estimator(spec, templates, triage=Capabilities(chat=False, classify=True)).ticket(
        Ticket(text="my card was charged twice")
    )
    flagship = (estimate.flagship_input_tokens * 10 + estimate.flagship_output_tokens * 20) / 1e6
    assert estimate.escalated_usd == pytest.approx(flagship)
    assert estimate.mini_usd > 0


def test_report_is_json_round_trippable() -> None:
    report = build_report(
        SCORED,
        graph="g.yaml",
        data="d.csv",
        triage_model="mini",
        threshold=0.5,
        cost=COST,
        gate_kept=[True] * 5,
    )
    assert report.at_threshold.threshold == 0.5 and report.gate is not None and report.gate.coverage == 1.0
    assert any(p.threshold == 0.5 for p in report.curve)
    again = EvalReport.model_validate(json.loads(report.model_dump_json()))
    assert again == report


labels = st.sampled_from(["a", "b", "c"])
confidence = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
scored_lists = st.lists(st.tuples(labels, labels, confidence), max_size=60)


@given(scored_lists, st.lists(confidence, max_size=20))
def test_curve_coverage_never_increases(scored: list[Scored], thresholds: list[float]) -> None:
    curve = selective_curve(scored, [*thresholds, 0.0, 1.0], COST)
    assert [p.threshold for p in curve] == sorted(p.threshold for p in curve if p.threshold is not None)
    for before, after in pairwise(curve):
        assert after.coverage <= before.coverage
        assert after.kept <= before.kept
        assert after.cost_per_1000 is not None and before.cost_per_1000 is not None
        assert after.cost_per_1000 >= before.cost_per_1000 - 1e-12
    for p in curve:
        assert p.kept + p.escalated == len(scored)
        assert 0.0 <= p.coverage <= 1.0
        for value in (p.accuracy_kept, p.accuracy_escalated):
            assert value is None or 0.0 <= value <= 1.0


@given(scored_lists)
def test_metrics_bounded_and_zero_threshold_keeps_all(scored: list[Scored]) -> None:
    assert 0.0 <= accuracy(scored) <= 1.0
    assert 0.0 <= macro_f1(scored) <= 1.0
    everything = point_at(scored, 0.0)
    assert everything.kept == len(scored)
    if scored:
        assert everything.accuracy_kept == pytest.approx(accuracy(scored))


@given(scored_lists, st.lists(confidence, max_size=20))
def test_curve_counts_what_a_threshold_keeps(scored: list[Scored], thresholds: list[float]) -> None:
    """The vectorised curve agrees with keeping ``confidence >= t`` ticket by ticket."""
    for point in selective_curve(scored, [*thresholds, 0.0, 1.0]):
        assert point.threshold is not None
        by_hand = point_for_mask(scored, [c >= point.threshold for _, _, c in scored])
        assert point.model_dump(exclude={"threshold"}) == by_hand.model_dump(exclude={"threshold"})
