"""The batch report over a cascade: routes by tier, skips by tier, and the escalation rate."""

from __future__ import annotations

from triagegate.batch.report import RunStats, render_summary
from triagegate.types import GateDecision, NodeRun, Outcome


def outcome(ticket: str, route: str, *decisions: GateDecision) -> Outcome:
    return Outcome(
        ticket_id=ticket,
        run_id="r",
        route=route,
        answer="answered",
        decisions=list(decisions),
        nodes=[NodeRun(node=route)],
    )


def keep(tier: str) -> GateDecision:
    return GateDecision(tier=tier, route="keep", confidence=0.95, threshold=0.8)


def escalate(tier: str) -> GateDecision:
    return GateDecision(
        tier=tier, route="escalate", confidence=0.3, threshold=0.8, reasons=["low_confidence"]
    )


def skip(tier: str, reason: str) -> GateDecision:
    return GateDecision(tier=tier, route="skip", reasons=[reason])


def test_routes_and_decisions_are_counted_per_tier_of_a_three_tier_cascade() -> None:
    stats = RunStats()
    stats.add(outcome("t1", "classifier", keep("classifier")), line=1)
    stats.add(outcome("t2", "small", escalate("classifier"), keep("small")), line=2)
    stats.add(outcome("t3", "flagship", escalate("classifier"), escalate("small")), line=3)
    stats.add(
        outcome("t4", "flagship", skip("classifier", "needs_vision"), skip("small", "needs_vision")), line=4
    )
    run = stats.as_dict()
    assert run["by_route"] == {"classifier": 1, "small": 1, "flagship": 2}
    assert run["by_tier"] == {
        "classifier": {"keep": 1, "escalate": 2, "skip": 1},
        "small": {"keep": 1, "escalate": 1, "skip": 1},
    }
    assert run["escalation"]["rate"] == 0.75, "three of four tickets went past a tier that could answer"
    summary = render_summary({"state": "done", "run": run, "output": "out.jsonl"})
    assert "routes      classifier 1, small 1, flagship 2 (escalation rate 75.0%)" in summary
    assert "skipped     classifier 1, small 1 (pre-gate)" in summary


def test_a_category_filter_skip_is_routing_not_escalation() -> None:
    stats = RunStats()
    stats.add(outcome("t1", "classifier", keep("classifier")), line=1)
    stats.add(outcome("t2", "general", skip("billing", "category_not_served"), keep("general")), line=2)
    assert stats.escalation_rate == 0.0
