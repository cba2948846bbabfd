"""Shadow sampling against the loopback OpenAI server: the kept answer comes first, the next tier
judges it off the path, the verdict reaches the store's listeners, and the budget caps it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

import triagegate
from tests.support.openai_server import OpenAIServer, Reply
from triagegate.shadow import ACCEPTABLE_FIELD, DayBudget, in_sample
from triagegate.store import Label

GRAPH = Path(__file__).parent / "graphs" / "shadow_openai.yaml"


def shadow_graph(tmp_path: Path, **shadow: Any) -> Path:
    raw = yaml.safe_load(GRAPH.read_text())
    raw["prompts"] = str(GRAPH.parent.parent.parent / "prompts")
    raw["tiers"][0]["gate"]["shadow"].update(shadow)
    path = tmp_path / "shadow.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def environ(server: OpenAIServer) -> dict[str, str]:
    return {"TRIAGEGATE_MINI_BASE_URL": server.base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url}


@given(st.integers(), st.text(min_size=1, max_size=40))
def test_the_sample_is_a_pure_function_of_seed_and_ticket(seed: int, ticket_id: str) -> None:
    assert in_sample(seed, ticket_id, 0.3) == in_sample(seed, ticket_id, 0.3)
    assert not in_sample(seed, ticket_id, 0.0)
    assert in_sample(seed, ticket_id, 1.0)
    if in_sample(seed, ticket_id, 0.2):
        assert in_sample(seed, ticket_id, 0.5)


def test_the_sample_draws_about_the_rate() -> None:
    drawn = sum(in_sample(3, f"t-{i}", 0.05) for i in range(20_000))
    assert 850 <= drawn <= 1150
    assert drawn != sum(in_sample(4, f"t-{i}", 0.05) and in_sample(3, f"t-{i}", 0.05) for i in range(20_000))


def test_the_day_budget_admits_runs_while_spent_plus_expected_fits() -> None:
    budget = DayBudget(cap=1.0)
    assert budget.admits("2026-01-01", estimate=0.4)
    budget.in_flight += 1
    assert budget.admits("2026-01-01", estimate=0.4)
    budget.in_flight += 1
    assert not budget.admits("2026-01-01", estimate=0.4)
    budget.finished("2026-01-01", 0.45)
    budget.finished("2026-01-01", 0.45)
    assert not budget.admits("2026-01-01", estimate=0.01)
    assert budget.admits("2026-01-02", estimate=0.4)
    assert budget.spent == 0.0


async def test_a_kept_ticket_is_answered_first_then_judged_by_the_next_tier(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.95
    gate = asyncio.Event()

    async def slow_judge(body: dict[str, Any]) -> None:
        await gate.wait()

    verdicts: list[Label] = []

    async def collect(label: Label) -> None:
        verdicts.append(label)

    openai_server.script(
        "flagship-model",
        Reply({"category": "shipping", "priority": "normal", "answer": "Better", ACCEPTABLE_FIELD: False}),
    )
    async with triagegate.load(shadow_graph(tmp_path), environ=environ(openai_server)) as pipeline:
        assert pipeline.shadows is not None
        pipeline.shadows.subscribe(collect)
        outcome = await pipeline.run(triagegate.Ticket(id="T-1", text="I was charged twice this month."))
        assert outcome.route == "mini" and outcome.category == "billing"
        assert outcome.shadow is not None and outcome.shadow.status == "scheduled"
        assert outcome.shadow.judge == "flagship"
        assert outcome.path == ["mini"]
        await pipeline.drain_shadows()
    assert openai_server.model_counts == {"mini-model": 1, "flagship-model": 1}
    judge = openai_server.requests[1]
    schema = judge["response_format"]["json_schema"]["schema"]
    assert ACCEPTABLE_FIELD in schema["required"]
    assert "draft answer: auto answer" in judge["messages"][1]["content"]
    assert len(verdicts) == 1
    label = verdicts[0]
    assert (label.ticket_id, label.source, label.label, label.acceptable) == (
        "T-1",
        "shadow",
        "shipping",
        False,
    )
    assert label.tier == "flagship" and label.graph_hash == outcome.graph_hash and label.cost_usd > 0


async def ignore(_label: Label) -> None:
    return None


async def test_escalated_unsampled_and_unrecorded_tickets_are_not_shadowed(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.4
    async with triagegate.load(shadow_graph(tmp_path), environ=environ(openai_server)) as pipeline:
        assert pipeline.shadows is not None
        pipeline.shadows.subscribe(ignore)
        escalated = await pipeline.run("Something is off with my parcel")
    assert escalated.route == "flagship" and escalated.shadow is None
    assert openai_server.model_counts == {"mini-model": 1, "flagship-model": 1}
    openai_server.reset()
    openai_server.code_confidence = 0.95
    async with triagegate.load(shadow_graph(tmp_path, rate=0.0), environ=environ(openai_server)) as pipeline:
        assert pipeline.shadows is not None
        pipeline.shadows.subscribe(ignore)
        kept = await pipeline.run("I was charged twice")
    assert kept.route == "mini" and kept.shadow is None
    assert openai_server.model_counts == {"mini-model": 1}
    openai_server.reset()
    async with triagegate.load(shadow_graph(tmp_path), environ=environ(openai_server)) as pipeline:
        unrecorded = await pipeline.run("I was charged twice")
    assert unrecorded.route == "mini" and unrecorded.shadow is None, "no subscriber: nothing would record it"
    assert openai_server.model_counts == {"mini-model": 1}


async def test_the_daily_budget_caps_shadow_runs_and_says_so(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.95
    graph = shadow_graph(tmp_path, max_usd_per_day=0.005)
    async with triagegate.load(graph, environ=environ(openai_server)) as pipeline:
        assert pipeline.shadows is not None
        pipeline.shadows.subscribe(ignore)
        outcomes = []
        for i in range(8):
            outcomes.append(
                await pipeline.run(triagegate.Ticket(id=f"T-{i}", text="I was charged twice this month."))
            )
            await pipeline.drain_shadows()
        assert pipeline.shadows is not None
        capped = pipeline.shadows.capped["mini"]
        spent = pipeline.shadows.spent_usd.get("mini", 0.0)
    statuses = [o.shadow.status for o in outcomes if o.shadow]
    ran = statuses.count("scheduled")
    assert len(statuses) == 8 and 1 <= ran < 8 and capped == 8 - ran
    assert openai_server.model_counts["flagship-model"] == ran
    assert spent <= 0.005
