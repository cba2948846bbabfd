"""Fitting gate thresholds: objectives on hand-checkable data, properties, held-out reporting."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triagegate.tuning.calibration import (
    FORCED_ESCALATE,
    FORCED_KEEP,
    Economics,
    Objective,
    Policy,
    Tickets,
    accuracy_lower_bound,
    bootstrap,
    calibrate,
    cross_validate,
    curve_rows,
    evaluate,
    fit_per_category,
    fit_single,
    fit_single_bounded,
    nice_threshold,
    split_indices,
)
from triagegate.tuning.evaluation import Scored, curve_thresholds

# Ten tickets, most confident first; the mini is right on these (1) and wrong on those (0).
CONFIDENCE = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
RIGHT = [1, 1, 1, 0, 1, 1, 0, 0, 1, 0]
# Kept accuracy keeping the top k: k=1..3: 1.0, 4: 0.75, 5: 0.8, 6: 0.833, 7: 0.714, 8: 0.625, 9: 0.667, 10: 0.6
TEN: list[Scored] = [("a", "a" if r else "b", c) for c, r in zip(CONFIDENCE, RIGHT, strict=True)]
# A cent per kept ticket, 11 cents per escalated one: cost per 1k = 11 - 10 * coverage.
PRICES = Economics(kept_usd=0.001, escalated_usd=0.011)


def kept_count(policy: Policy, tickets: Tickets) -> int:
    return int(policy.kept(tickets).sum())


@pytest.mark.parametrize(
    ("target", "threshold", "kept"),
    [(0.8, 0.6, 6), (0.83, 0.6, 6), (0.84, 0.85, 3), (1.0, 0.85, 3), (0.6, 0.0, 10), (0.5, 0.0, 10)],
)
def test_target_accuracy_keeps_the_most_tickets_meeting_it(
    target: float, threshold: float, kept: int
) -> None:
    tickets = Tickets.from_scored(TEN)
    policy, feasible = fit_single(tickets, Objective("target_accuracy", target))
    assert feasible and policy.threshold == threshold and kept_count(policy, tickets) == kept


def test_target_accuracy_out_of_reach_escalates_everything() -> None:
    tickets = Tickets.from_scored([("a", "b", 0.9), ("a", "b", 0.5)])
    policy, feasible = fit_single(tickets, Objective("target_accuracy", 0.9))
    assert not feasible and kept_count(policy, tickets) == 0 and policy.threshold == 1.0


@pytest.mark.parametrize(
    ("limit", "threshold", "kept"), [(0.3, 0.5, 7), (0.5, 0.6, 6), (0.0, 0.0, 10), (1.0, 0.85, 3)]
)
def test_max_escalation_picks_the_best_accuracy_within_the_limit(
    limit: float, threshold: float, kept: int
) -> None:
    tickets = Tickets.from_scored(TEN)
    policy, feasible = fit_single(tickets, Objective("max_escalation", limit))
    assert feasible and policy.threshold == threshold and kept_count(policy, tickets) == kept


def test_budget_maximises_overall_accuracy_within_the_cost() -> None:
    tickets = Tickets.from_scored(TEN)
    # $6 per 1k allows coverage >= 0.5. With a perfect flagship overall accuracy is
    # (hits kept + escalated) / 10: k=5 and k=6 both give 0.9; the cheaper (k=6) wins.
    policy, feasible = fit_single(tickets, Objective("budget", 6.0), PRICES)
    assert feasible and policy.threshold == 0.6 and kept_count(policy, tickets) == 6
    point = evaluate(policy, tickets, PRICES)
    assert point.system_accuracy == pytest.approx(0.9) and point.cost_per_1000 == pytest.approx(5.0)
    # An unlimited budget and a perfect flagship: keeping the three sure hits is as accurate as
    # escalating everything, and cheaper.
    policy, _ = fit_single(tickets, Objective("budget", 100.0), PRICES)
    assert kept_count(policy, tickets) == 3
    # A flagship right half the time: (hits + 0.5 * escalated) / 10 peaks at k=6 (0.7).
    coin = Economics(0.001, 0.011, flagship_accuracy=0.5)
    policy, _ = fit_single(tickets, Objective("budget", 100.0), coin)
    assert kept_count(policy, tickets) == 6
    assert evaluate(policy, tickets, coin).system_accuracy == pytest.approx(0.7)
    # Too little money for any threshold: the cheapest point, reported infeasible.
    policy, feasible = fit_single(tickets, Objective("budget", 0.5), PRICES)
    assert not feasible and kept_count(policy, tickets) == 10


def test_forced_routes_count_but_never_move() -> None:
    forced = [0] * 10
    forced[0] = FORCED_ESCALATE  # the most confident (right) ticket always escalates
    forced[9] = FORCED_KEEP  # the least confident (wrong) ticket always stays
    tickets = Tickets.from_scored(TEN, forced)
    # The forced wrong ticket is always kept, so keeping the top k free tickets gives
    # k=0: 0/1, 1: 1/2, 2: 2/3, 3: 2/4, 4: 3/5, 5: 4/6, 6: 4/7, 7: 4/8, 8: 5/9.
    policy, feasible = fit_single(tickets, Objective("target_accuracy", 0.6))
    kept = policy.kept(tickets)
    assert feasible and policy.threshold == 0.6 and not kept[0] and kept[9] and kept.sum() == 6
    assert evaluate(policy, tickets, Economics()).accuracy_kept == pytest.approx(4 / 6)
    policy, feasible = fit_single(tickets, Objective("target_accuracy", 0.8))
    assert not feasible and kept_count(policy, tickets) == 1


def test_accuracy_lower_bound_is_the_exact_binomial_bound() -> None:
    bound = accuracy_lower_bound(np.array([0, 0, 5, 985]), np.array([0, 3, 5, 1000]), 0.95)
    assert bound[0] == 0.0 and bound[1] == 0.0
    assert bound[2] == pytest.approx(0.05 ** (1 / 5))  # all right: P(5 of 5 | p) = p**5 = 5%
    assert 0.975 < bound[3] < 0.985  # below the observed 0.985, by about 1.645 standard errors
    with pytest.raises(ValueError):
        accuracy_lower_bound(np.array([1]), np.array([1]), 1.0)


def test_bounded_threshold_keeps_a_margin_that_shrinks_with_more_tickets() -> None:
    def scored(n: int) -> list[Scored]:
        # Confidence falls with the index; one wrong ticket in every 100, then every 5 past 80%.
        out: list[Scored] = []
        for i in range(n):
            wrong = i % 100 == 99 if i < 0.8 * n else i % 5 == 4
            out.append(("a", "b" if wrong else "a", 1.0 - i / n))
        return out

    margins = []
    for n in (500, 5000):
        tickets = Tickets.from_scored(scored(n))
        point, point_ok = fit_single(tickets, Objective("target_accuracy", 0.97))
        bounded, bounded_ok = fit_single_bounded(tickets, 0.97, 0.95)
        assert point_ok and bounded_ok
        assert kept_count(bounded, tickets) < kept_count(point, tickets)
        assert evaluate(bounded, tickets, Economics()).accuracy_kept >= 0.97
        margins.append(kept_count(point, tickets) / n - kept_count(bounded, tickets) / n)
    assert margins[1] < margins[0]


def test_bounded_threshold_out_of_reach_escalates_what_it_can() -> None:
    tickets = Tickets.from_scored(TEN)
    policy, feasible = fit_single_bounded(tickets, 0.9, 0.95)  # 3 right in a row bound to 0.37 at most
    assert not feasible and kept_count(policy, tickets) == 0
    forced = [FORCED_KEEP] + [0] * 9
    policy, feasible = fit_single_bounded(Tickets.from_scored(TEN, forced), 0.3, 0.5)
    assert feasible and policy.kept(Tickets.from_scored(TEN, forced))[0]


def test_nice_threshold_is_the_shortest_decimal_in_the_interval() -> None:
    assert nice_threshold(0.8, 0.85) == 0.85
    assert nice_threshold(0.8329, 0.8331) == 0.833
    assert nice_threshold(-np.inf, 0.3) == 0.0
    assert nice_threshold(0.95, np.inf) == 1.0
    assert nice_threshold(0.5, 0.9) == 0.9
    with pytest.raises(ValueError):
        nice_threshold(1.0, np.inf)


def two_categories(wrong_in_a: int = 10, b_size: int = 40) -> list[Scored]:
    """A: 40 predictions, confidences 0.99..0.60, the lowest ``wrong_in_a`` wrong; B: all right, 0.59 down."""
    a = [("A" if i < 40 - wrong_in_a else "Z", "A", round(0.99 - i * 0.01, 2)) for i in range(40)]
    b = [("B", "B", round(0.59 - i * 0.01, 2)) for i in range(b_size)]
    return a + b


def test_per_category_thresholds_keep_more_at_the_same_target() -> None:
    tickets = Tickets.from_scored(two_categories())
    objective = Objective("target_accuracy", 1.0)
    single, _ = fit_single(tickets, objective)
    # One threshold must stop above A's wrong tickets (0.69), which sit above all of B.
    assert single.threshold == 0.7 and kept_count(single, tickets) == 30
    policy, feasible, fits = fit_per_category(tickets, objective, global_threshold=single.threshold)
    assert feasible and policy.category_thresholds == {"B": 0.0}
    assert kept_count(policy, tickets) == 70
    assert {f.name: f.threshold for f in fits} == {"A": None, "B": 0.0}

    # 90%: keep all of B (40 right) and A's 30 right plus 7 wrong: 70/77 >= 0.9, 70/78 < 0.9.
    objective = Objective("target_accuracy", 0.9)
    single, _ = fit_single(tickets, objective)
    assert kept_count(single, tickets) == 33  # 30/33 >= 0.9; adding B never recovers A's 10 misses
    policy, feasible, _ = fit_per_category(tickets, objective, global_threshold=single.threshold)
    assert feasible and policy.category_thresholds == {"A": 0.63, "B": 0.0}
    point = evaluate(policy, tickets, Economics())
    assert point.kept == 77 and point.accuracy_kept == pytest.approx(70 / 77)


def test_per_category_falls_back_to_the_global_threshold_without_support() -> None:
    tickets = Tickets.from_scored(two_categories(b_size=20))
    objective = Objective("target_accuracy", 1.0)
    single, _ = fit_single(tickets, objective)
    policy, feasible, fits = fit_per_category(
        tickets, objective, global_threshold=single.threshold, min_support=30
    )
    assert feasible and policy.category_thresholds == {} and policy.threshold == single.threshold
    assert {f.name: (f.support, f.threshold) for f in fits} == {"A": (40, None), "B": (20, None)}
    policy, _, _ = fit_per_category(tickets, objective, global_threshold=single.threshold, min_support=20)
    assert policy.category_thresholds == {"B": 0.0}


def test_per_category_other_objectives() -> None:
    tickets = Tickets.from_scored(two_categories())
    # At most 10% escalated: keep 72 of 80; per category, B's 40 right tickets come before A's misses.
    objective = Objective("max_escalation", 0.1)
    single, _ = fit_single(tickets, objective)
    policy, feasible, _ = fit_per_category(tickets, objective, global_threshold=single.threshold)
    assert feasible
    assert evaluate(policy, tickets, Economics()).accuracy_kept == pytest.approx(70 / 72)
    # One threshold past A's misses is best keeping everything: 70/80 beats 62/72.
    assert evaluate(single, tickets, Economics()).accuracy_kept == pytest.approx(70 / 80)
    # A budget that allows escalating 10 tickets: the per-category policy escalates exactly A's misses.
    objective = Objective("budget", 2.25)  # 1000 * (70 * 0.001 + 10 * 0.011) / 80
    single, _ = fit_single(tickets, objective, PRICES)
    policy, feasible, _ = fit_per_category(tickets, objective, PRICES, global_threshold=single.threshold)
    assert feasible and evaluate(policy, tickets, PRICES).system_accuracy == pytest.approx(1.0)


def random_scored(seed: int, n: int, categories: int = 4) -> list[Scored]:
    rng = random.Random(seed)
    out: list[Scored] = []
    for _ in range(n):
        label = f"c{rng.randrange(categories)}"
        confidence = round(rng.random(), 3)
        predicted = label if rng.random() < 0.3 + 0.7 * confidence else f"c{rng.randrange(categories)}"
        out.append((label, predicted, confidence))
    return out


scored_lists = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.sampled_from("abc"),
        st.floats(0.0, 1.0, allow_nan=False).map(lambda x: round(x, 2)),
    ),
    min_size=1,
    max_size=60,
)
forced_flags = st.lists(st.sampled_from([0, 0, 0, FORCED_ESCALATE, FORCED_KEEP]), min_size=60, max_size=60)


@settings(max_examples=150, deadline=None)
@given(scored=scored_lists, forced=forced_flags, target=st.floats(0.0, 1.0), min_support=st.integers(1, 10))
def test_target_is_met_on_the_calibration_tickets_when_feasible(
    scored: list[Scored], forced: list[int], target: float, min_support: int
) -> None:
    tickets = Tickets.from_scored(scored, forced[: len(scored)])
    objective = Objective("target_accuracy", target)
    single, feasible = fit_single(tickets, objective)
    if feasible:
        point = evaluate(single, tickets, Economics())
        assert point.accuracy_kept is not None and point.accuracy_kept >= target - 1e-9
    policy, ok, _ = fit_per_category(
        tickets, objective, global_threshold=single.threshold, min_support=min_support
    )
    if ok:
        point = evaluate(policy, tickets, Economics())
        assert point.accuracy_kept is not None and point.accuracy_kept >= target - 1e-9
    if feasible:
        assert ok and kept_count(policy, tickets) >= kept_count(single, tickets)


@settings(max_examples=150, deadline=None)
@given(scored=scored_lists, low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_coverage_never_grows_with_the_target(scored: list[Scored], low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    tickets = Tickets.from_scored(scored)
    loose, _ = fit_single(tickets, Objective("target_accuracy", low))
    strict, _ = fit_single(tickets, Objective("target_accuracy", high))
    assert kept_count(loose, tickets) >= kept_count(strict, tickets)
    thresholds = sorted({c for _, _, c in scored} | {0.0, 1.0})
    kept = [kept_count(Policy(t), tickets) for t in thresholds]
    assert kept == sorted(kept, reverse=True)


@settings(max_examples=100, deadline=None)
@given(scored=scored_lists, limit=st.floats(0.0, 1.0))
def test_max_escalation_respects_the_limit(scored: list[Scored], limit: float) -> None:
    tickets = Tickets.from_scored(scored)
    policy, feasible = fit_single(tickets, Objective("max_escalation", limit))
    assert feasible
    escalated = len(tickets) - kept_count(policy, tickets)
    assert escalated <= limit * len(tickets) + 1e-9


def test_bootstrap_interval_contains_the_point_and_is_seeded() -> None:
    tickets = Tickets.from_scored(random_scored(1, 500))
    policy = Policy(0.5)
    point = evaluate(policy, tickets, Economics(), resamples=1000, seed=7)
    assert point.coverage_ci is not None and point.accuracy_kept_ci is not None
    assert point.coverage_ci.low <= point.coverage <= point.coverage_ci.high
    assert point.accuracy_kept is not None
    assert point.accuracy_kept_ci.low <= point.accuracy_kept <= point.accuracy_kept_ci.high
    assert point.coverage_ci.high - point.coverage_ci.low < 0.15
    assert evaluate(policy, tickets, Economics(), resamples=1000, seed=7) == point
    assert evaluate(policy, tickets, Economics(), resamples=1000, seed=8) != point
    kept = np.zeros(len(tickets), dtype=np.bool_)
    coverage, accuracy = bootstrap(tickets.correct, kept, resamples=50)
    assert coverage.low == coverage.high == 0.0 and accuracy is None


def test_held_out_tickets_report_but_never_fit() -> None:
    tickets = Tickets.from_scored(random_scored(2, 400))
    fitting, held = split_indices(len(tickets), 0.5, 13)
    assert set(fitting).isdisjoint(held) and sorted(fitting + held) == list(range(400))
    objective = Objective("target_accuracy", 0.9)
    result = calibrate(tickets.subset(fitting), tickets.subset(held), objective, resamples=200)
    # A different held-out part changes the report, never the fitted thresholds.
    other = calibrate(
        tickets.subset(fitting),
        Tickets.from_scored(random_scored(3, 400)).subset(held),
        objective,
        resamples=200,
    )
    assert other.single.threshold == result.single.threshold
    assert other.single.calibration == result.single.calibration
    alone, _ = fit_single(tickets.subset(fitting), objective)
    assert result.single.threshold == alone.threshold
    expected = evaluate(alone, tickets.subset(held), Economics(), resamples=200, seed=13)
    assert result.single.held_out == expected
    assert result.single.calibration.tickets == 200 and result.single.held_out.tickets == 200
    assert result.curve[0].point.coverage == 1.0 and result.curve[-1].label == "all flagship"
    labels = {row.label for row in result.curve}
    assert {"all mini", "all flagship", "fitted: single"} <= labels


def test_calibrate_reports_per_category_against_single() -> None:
    scored = two_categories() * 4
    tickets = Tickets.from_scored(scored)
    fitting, held = split_indices(len(tickets), 0.5, 13)
    result = calibrate(
        tickets.subset(fitting), tickets.subset(held), Objective("target_accuracy", 1.0), resamples=100
    )
    assert result.per_category is not None and result.chosen == "per_category"
    assert result.per_category.category_thresholds == {"B": 0.0}
    assert result.cross_validation is not None
    assert result.cross_validation.per_category.coverage > result.cross_validation.single.coverage
    iso = result.iso_accuracy
    assert iso is not None and iso.accuracy_kept == 1.0
    assert iso.per_category_coverage == pytest.approx(0.875, abs=0.05)
    assert iso.single_coverage == pytest.approx(0.375, abs=0.05)
    assert iso.coverage_gain > 0.4
    assert result.policy is result.per_category


def test_cross_validation_is_out_of_fold_and_decides_the_choice() -> None:
    tickets = Tickets.from_scored(random_scored(4, 2000, categories=20))
    fitting, held = split_indices(len(tickets), 0.5, 13)
    objective = Objective("target_accuracy", 0.95)
    cv = cross_validate(tickets.subset(fitting), objective, folds=5, seed=13, min_support=30)
    assert cv.single.tickets == cv.per_category.tickets == len(fitting)
    assert cv == cross_validate(tickets.subset(fitting), objective, folds=5, seed=13, min_support=30)
    result = calibrate(tickets.subset(fitting), tickets.subset(held), objective, resamples=100)
    assert result.per_category is not None and result.cross_validation == cv
    # In sample the per-category policy always looks at least as good; out of fold it has to earn it.
    assert result.per_category.calibration.kept >= result.single.calibration.kept
    out_of_fold_wins = cv.per_category.kept > cv.single.kept and (cv.per_category.accuracy_kept or 0) >= min(
        cv.single.accuracy_kept or 0, 0.95
    )
    assert (result.chosen == "per_category") == out_of_fold_wins


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Objective("target_accuracy", 1.5)
    with pytest.raises(ValueError, match="budget"):
        Objective("budget", -1)
    with pytest.raises(ValueError, match="probabilities"):
        Tickets.from_scored([("a", "a", 1.5)])
    with pytest.raises(ValueError, match="forced"):
        Tickets.from_scored([("a", "a", 0.5)], [0, 0])
    with pytest.raises(ValueError, match="calibration fraction"):
        split_indices(10, 1.0, 1)


def test_ten_thousand_tickets_calibrate_quickly() -> None:
    tickets = Tickets.from_scored(random_scored(5, 10_000, categories=77))
    fitting, held = split_indices(len(tickets), 0.5, 13)
    started = time.perf_counter()
    calibrate(tickets.subset(fitting), tickets.subset(held), Objective("target_accuracy", 0.95))
    assert time.perf_counter() - started < 5.0


def test_calibrate_draws_the_curve_eval_draws() -> None:
    """One selective curve: calibrate's rows sit at eval's thresholds and keep what each threshold keeps."""
    tickets = Tickets.from_scored(TEN, [FORCED_ESCALATE, 0, 0, 0, 0, 0, 0, 0, 0, FORCED_KEEP])
    free = tickets.confidence[tickets.forced == 0]
    rows = [r for r in curve_rows(tickets, PRICES, points=5) if not r.label]
    assert sorted(r.threshold for r in rows if r.threshold is not None) == curve_thresholds(free, points=5)
    for row in rows:
        assert row.threshold is not None
        kept = Policy(row.threshold).kept(tickets)
        assert row.point.kept == int(kept.sum())
        assert row.point.accuracy_kept == pytest.approx(tickets.correct[kept].mean())
        assert row.point.cost_per_1000 == pytest.approx(11 - 10 * row.point.coverage)
