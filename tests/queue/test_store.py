"""The outcomes table on a real PostgreSQL: migrations and the idempotent upsert."""

from __future__ import annotations

import asyncio

import psycopg

from triagegate.store.postgres import MIGRATIONS, OutcomeStore, migrate_dsn
from triagegate.types import GateDecision, NodeRun, Outcome


def outcome(
    ticket_id: str = "t-1", *, graph_hash: str = "h1", status: str = "ok", run_id: str = "r1"
) -> Outcome:
    return Outcome(
        ticket_id=ticket_id,
        run_id=run_id,
        graph="scripted",
        graph_hash=graph_hash,
        status=status,  # type: ignore[arg-type]
        route="mini",
        category="billing",
        priority="normal",
        answer="Refund on its way.",
        confidence=0.93,
        confidence_method="verbalized",
        path=["mini"],
        decisions=[GateDecision(tier="mini", route="keep", confidence=0.93, threshold=0.7)],
        nodes=[NodeRun(node="mini", model_alias="mini", input_tokens=10, output_tokens=5, cost_usd=0.001)],
        input_tokens=10,
        output_tokens=5,
        cost_usd=0.001,
        latency_ms=12.5,
    )


async def test_migrations_are_idempotent_and_safe_to_run_concurrently(database: str) -> None:
    results = await asyncio.gather(*(migrate_dsn(database) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], [v for v, _ in MIGRATIONS]]
    assert await migrate_dsn(database) == []
    with psycopg.connect(database) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'outcomes'"
            )
        }
    assert versions == [v for v, _ in MIGRATIONS]
    assert {
        "ticket_id",
        "graph_hash",
        "outcome",
        "route",
        "status",
        "category",
        "cost_usd",
        "latency_ms",
        "created_at",
    } <= columns


async def test_upsert_keeps_one_row_per_ticket_and_graph(database: str) -> None:
    async with OutcomeStore(database) as store:
        await store.migrate()
        await store.upsert(outcome(run_id="r1"))
        await store.upsert(outcome(run_id="r2", status="failed"))
        await store.upsert(outcome(graph_hash="h2"))
        await store.upsert_many([outcome("t-2"), outcome("t-3"), outcome("t-2", run_id="r9")])
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT ticket_id, graph_hash, run_id, status, route, category, cost_usd, latency_ms, writes, outcome"
            " FROM outcomes ORDER BY ticket_id, graph_hash"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("t-1", "h1"), ("t-1", "h2"), ("t-2", "h1"), ("t-3", "h1")]
    first = rows[0]
    assert (first[2], first[3], first[4], first[5]) == ("r2", "failed", "mini", "billing"), (
        "the latest write wins"
    )
    assert (first[6], first[7], first[8]) == (0.001, 12.5, 2)
    assert Outcome.model_validate(first[9]) == outcome(run_id="r2", status="failed")
    assert first[9]["decisions"] == [
        {"tier": "mini", "route": "keep", "confidence": 0.93, "threshold": 0.7, "reasons": []}
    ], "each gate decision is kept in the outcome column, queryable as outcome->'decisions'"
    assert rows[2][2] == "r9" and rows[2][8] == 2
