"""Cascade tuning: the offline replay of the cascade agrees with the compiled graph, and the fit meets its objective.

The agreement test runs the real pipeline (graph.py's StateGraph, the gate, the pre-gate)
with scripted tiers over seeded tickets at several thresholds, and compares each ticket's
route with :func:`triagegate.tuning.cascade.simulate` over the tiers' triages from
:func:`triagegate.tuning.scoring.score_tiers` with the same scripted models.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import triagegate
from tests.test_graph import (
    CATEGORIES,
    SPECIALIST,
    THREE_TIERS,
    flagship_reply,
    probabilities,
    triage_reply,
    write_graph,
)
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ChatRequest, ClassifyRequest
from triagegate.spec import load_spec
from triagegate.tuning import cascade as cc
from triagegate.tuning.calibration import FORCED_ESCALATE, FORCED_KEEP, THRESHOLD_DECIDES
from triagegate.tuning.scoring import score_tiers, tier_view
from triagegate.types import Ticket

CODES = "ABCD"


def seeded_tickets(seed: int, n: int) -> dict[str, dict[str, Any]]:
    """``{text: what each tier says of it}`` drawn from ``seed``."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for i in range(n):
        out[f"ticket number {i} about something"] = {
            "label": rng.choice(CATEGORIES),
            "clf": (rng.choice(CATEGORIES), round(rng.uniform(0.3, 1.0), 3)),
            "small": (rng.choice(CATEGORIES), round(rng.uniform(0.2, 1.0), 3)),
            "billing": (rng.choice(CATEGORIES), round(rng.uniform(0.2, 1.0), 3)),
            "flagship": rng.choice(CATEGORIES),
        }
    return out


def handlers(tickets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def which(messages: Any) -> dict[str, Any]:
        said = "\n".join(m.text for m in messages)
        return next(v for k, v in tickets.items() if k in said)

    def classify(request: ClassifyRequest) -> dict[str, float]:
        return probabilities(*next(v["clf"] for k, v in tickets.items() if k in request.text))

    def chat(tier: str) -> Any:
        def reply(request: ChatRequest) -> str:
            category, confidence = which(request.messages)[tier]
            return triage_reply(CODES[CATEGORIES.index(category)], confidence)

        return reply

    def flagship(request: ChatRequest) -> str:
        category = which(request.messages)["flagship"]
        if request.json_schema is not None and request.json_schema.name == "triage":
            return triage_reply(CODES[CATEGORIES.index(category)], 0.99)
        return flagship_reply(category)

    return {
        "scripted": {
            "clf": {"classify": classify},
            "drafter": {"chat": lambda _request: "Drafted."},
            "small": {"chat": chat("small")},
            "billing-llm": {"chat": chat("billing")},
            "flagship": {"chat": flagship},
        }
    }


def with_thresholds(text: str, first: float, second: float) -> str:
    return text.replace("threshold: 0.9", f"threshold: {first}").replace(
        "threshold: 0.8", f"threshold: {second}"
    )


@pytest.mark.parametrize("tiers", [THREE_TIERS, SPECIALIST], ids=["three tiers", "a specialist tier"])
def test_the_offline_replay_routes_every_ticket_as_the_graph_does(tmp_path: Path, tiers: str) -> None:
    tickets = seeded_tickets(7, 60)
    extras = handlers(tickets)
    graph = write_graph(tmp_path, tiers)
    loaded = load_spec(graph, environ={})
    spec = loaded.spec
    rows = [Ticket(id=f"t{i}", text=text) for i, text in enumerate(tickets)]

    async def per_tier() -> list[Any]:
        backends = []
        for i in range(len(spec.tiers)):
            view = tier_view(loaded, i)
            alias = view.spec.first_tier.model
            context = BuildContext(loaded=view, environ={}, cache_dir=tmp_path, extras=extras)
            backends.append(build_backends(context, [alias])[alias])
        return await score_tiers(loaded, rows, backends), [b.capabilities for b in backends]

    triages, caps = asyncio.run(per_tier())
    labels = [v["label"] for v in tickets.values()]
    data = cc.cascade_data(
        spec,
        labels,
        dict(zip(spec.tier_names, triages, strict=True)),
        dict(zip(spec.tier_names, caps, strict=True)),
        {name: 0.0 for name in spec.tier_names},
    )
    original = graph.read_text(encoding="utf-8")
    answered: set[str] = set()
    for first, second in [(0.9, 0.8), (0.5, 0.5), (0.75, 0.3), (0.0, 1.0), (1.0, 0.0)]:
        graph.write_text(with_thresholds(original, first, second), encoding="utf-8")

        async def run() -> list[triagegate.Outcome]:
            async with triagegate.load(graph, environ={}, extras=extras) as pipeline:
                return [await pipeline.run(t) for t in rows]

        outcomes = asyncio.run(run())
        route = cc.simulate(data, (first, second))
        names = [spec.tier_names[j] for j in route.answered_by]
        assert names == [o.route for o in outcomes], (first, second)
        answered.update(names)
        assert list(route.correct) == [o.category == label for o, label in zip(outcomes, labels, strict=True)]
        reached = [
            [n for n, ran in zip(spec.tier_names, route.reached[:, i], strict=True) if ran]
            for i in range(len(rows))
        ]
        assert reached == [[p for p in o.path if ":" not in p] for o in outcomes]
    assert answered == set(spec.tier_names), "every tier answers some ticket at some thresholds"


def column(
    name: str, predicted: list[int], confidence: list[float], forced: list[int] | None = None, **kw: Any
) -> cc.TierColumn:
    n = len(predicted)
    return cc.TierColumn(
        name=name,
        predicted=np.asarray(predicted, dtype=np.int64),
        confidence=np.asarray(confidence, dtype=np.float64),
        forced=np.asarray(forced or [THRESHOLD_DECIDES] * n, dtype=np.int8),
        skipped=np.asarray(kw.pop("skipped", [False] * n), dtype=np.bool_),
        serves=kw.pop("serves", None),
        call_usd=kw.pop("call_usd", 0.0),
        **kw,
    )


def test_simulate_counts_costs_along_the_path_and_the_pre_gate_skips() -> None:
    data = cc.CascadeData(
        labels=np.array([0, 1, 0, 1], dtype=np.int64),
        categories=("a", "b"),
        tiers=(
            column(
                "one",
                [0, 0, 1, 1],
                [0.9, 0.4, 0.9, 0.2],
                forced=[0, 0, FORCED_ESCALATE, 0],
                call_usd=0.0,
                keep_usd=1.0,
            ),
            column(
                "two", [0, 1, 0, 0], [0.5, 0.9, 0.9, 0.9], skipped=[False, False, False, True], call_usd=2.0
            ),
            column("last", [0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0], forced=[FORCED_KEEP] * 4, call_usd=10.0),
        ),
    )
    route = cc.simulate(data, (0.8, 0.8))
    assert route.answered_by.tolist() == [0, 1, 1, 2]
    assert route.correct.tolist() == [True, True, True, True]
    assert route.usd.tolist() == [1.0, 2.0, 2.0, 10.0]
    p = cc.point(data, (0.8, 0.8))
    assert p.cost_per_1000 == pytest.approx(1000 * 15 / 4) and p.last_share == 0.25
    assert [t.answered for t in p.tiers] == [0.25, 0.5, 0.25]
    alone = cc.last_tier_alone(data)
    assert (alone.accuracy, alone.cost_per_1000) == (1.0, 10_000.0)


@st.composite
def cascades(draw: st.DrawFn) -> cc.CascadeData:
    n = draw(st.integers(4, 40))
    k = draw(st.integers(2, 4))
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    tiers = []
    for j in range(k):
        predicted = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        confidence = draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9, 1.0]), min_size=n, max_size=n))
        forced = draw(st.lists(st.sampled_from([-1, 0, 0, 0, 1]), min_size=n, max_size=n))
        tiers.append(column(f"t{j}", predicted, confidence, forced=forced, call_usd=float(10**j)))
    return cc.CascadeData(np.asarray(labels, dtype=np.int64), ("a", "b", "c"), tuple(tiers))


@settings(max_examples=60, deadline=None)
@given(cascades(), st.floats(0.0, 1.0))
def test_a_feasible_fit_meets_its_target_and_no_grid_point_is_cheaper(
    data: cc.CascadeData, target: float
) -> None:
    fit = cc.fit(data, cc.CascadeObjective(target_accuracy=target))
    again = cc.point(data, tuple(fit.thresholds.values()))
    assert again == fit.fitted, "the fitted point is what the written thresholds do"
    if fit.feasible:
        assert fit.fitted.accuracy >= target - 1e-9
    grid = sorted({0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0})
    best = None
    for combo in np.array(np.meshgrid(*[grid] * len(data.gated))).T.reshape(-1, len(data.gated)):
        p = cc.point(data, tuple(float(v) for v in combo))
        if p.accuracy >= target - 1e-9 and (best is None or p.cost_per_1000 < best - 1e-9):
            best = p.cost_per_1000
    assert fit.feasible == (best is not None)
    if best is not None:
        assert fit.fitted.cost_per_1000 <= best + 1e-9


def test_bounds_on_the_last_share_and_the_budget_are_kept() -> None:
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(0, 3, n)
    tiers = []
    for j, skill in enumerate([0.6, 0.8, 0.97]):
        right = rng.random(n) < skill
        predicted = np.where(right, labels, (labels + 1) % 3)
        confidence = np.clip(np.where(right, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.7, n)), 0, 1)
        tiers.append(column(f"t{j}", predicted.tolist(), confidence.tolist(), call_usd=float(10**j) / 1000))
    data = cc.CascadeData(labels.astype(np.int64), ("a", "b", "c"), tuple(tiers))
    free = cc.fit(data, cc.CascadeObjective(target_accuracy=0.9))
    assert free.feasible and free.fitted.accuracy >= 0.9
    bounded = cc.fit(
        data, cc.CascadeObjective(target_accuracy=0.9, max_last_share=free.fitted.last_share / 2)
    )
    assert bounded.fitted.last_share <= free.fitted.last_share / 2 + 1e-9
    assert bounded.fitted.cost_per_1000 >= free.fitted.cost_per_1000 - 1e-9 or not bounded.feasible
    tight = cc.fit(data, cc.CascadeObjective(target_accuracy=0.99, budget=free.fitted.cost_per_1000 / 4))
    assert not tight.feasible and tight.fitted.cost_per_1000 <= free.fitted.cost_per_1000 / 4 + 1e-9
    assert len(free.frontier) >= 2
    costs = [cc.point(data, c).cost_per_1000 for c in free.frontier]
    assert costs == sorted(costs)


def test_tier_curves_count_the_tickets_that_reach_each_tier() -> None:
    data = cc.CascadeData(
        labels=np.array([0, 1, 0, 1], dtype=np.int64),
        categories=("a", "b"),
        tiers=(
            column("one", [0, 0, 1, 1], [0.9, 0.4, 0.9, 0.2]),
            column("two", [0, 1, 0, 0], [0.5, 0.9, 0.9, 0.9]),
            column("last", [0, 1, 0, 1], [1.0] * 4, forced=[FORCED_KEEP] * 4),
        ),
    )
    one, two = cc.tier_curves(data, (0.8, 0.8))
    assert (one.reached, two.reached) == (4, 2)
    assert one.at_threshold is not None and (one.at_threshold.kept, one.at_threshold.accuracy_kept) == (
        2,
        0.5,
    )
    assert two.at_threshold is not None and (two.at_threshold.kept, two.at_threshold.accuracy_kept) == (
        2,
        0.5,
    )


def test_objectives_refuse_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="target accuracy"):
        cc.CascadeObjective(target_accuracy=1.5)
    with pytest.raises(ValueError, match="last tier"):
        cc.CascadeObjective(target_accuracy=0.9, max_last_share=-0.1)
    with pytest.raises(ValueError, match="budget"):
        cc.CascadeObjective(target_accuracy=0.9, budget=float("inf"))
