"""The outcome store's contract, the same on SQLite and PostgreSQL: migrations, the keyed upsert,
labels, graphs, reference histograms and the windowed read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from triagegate.errors import ConfigError
from triagegate.store import GraphInfo, Label, Reference, describe_store, open_store, read_store, schema
from triagegate.types import GateDecision, Outcome, ShadowCheck


def outcome(ticket_id: str, *, graph_hash: str = "h1", route: str = "mini", run_id: str = "r1") -> Outcome:
    return Outcome(
        ticket_id=ticket_id,
        run_id=run_id,
        graph="g",
        graph_hash=graph_hash,
        route=route,
        category="billing",
        confidence=0.93,
        decisions=[GateDecision(tier="mini", route="keep", confidence=0.93, threshold=0.8)],
        cost_usd=0.001,
        shadow=ShadowCheck(tier="mini", judge="flagship", status="scheduled"),
    )


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def test_outcomes_are_keyed_by_ticket_and_graph_and_read_back_in_time_order(store_url: str) -> None:
    clock = Clock()
    async with open_store(store_url, clock=clock) as store:
        await store.upsert(outcome("t-1"))
        clock.now += 10
        await store.upsert_many([outcome("t-2"), outcome("t-1", graph_hash="h2")])
        clock.now += 10
        await store.upsert(outcome("t-1", run_id="r2"))
    snapshot = read_store(store_url)
    rows = [(s.outcome.ticket_id, s.outcome.graph_hash, s.outcome.run_id) for s in snapshot.outcomes]
    assert sorted(rows) == [("t-1", "h1", "r2"), ("t-1", "h2", "r1"), ("t-2", "h1", "r1")]
    assert snapshot.outcomes[0].outcome.shadow == ShadowCheck(
        tier="mini", judge="flagship", status="scheduled"
    )
    since = read_store(store_url, since=1_000_005.0)
    assert sorted(s.outcome.ticket_id for s in since.outcomes) == ["t-1", "t-2"]
    one_graph = read_store(store_url, graph_hash="h2")
    assert [s.outcome.ticket_id for s in one_graph.outcomes] == ["t-1"]


async def test_labels_graphs_and_references_round_trip_and_replace_by_key(store_url: str) -> None:
    async with open_store(store_url, clock=Clock()) as store:
        await store.put_label(
            Label(ticket_id="t-1", source="shadow", label="billing", acceptable=True, cost_usd=0.01)
        )
        await store.put_label(Label(ticket_id="t-1", source="shadow", label="refund", acceptable=False))
        await store.put_label(Label(ticket_id="t-1", source="human", label="billing", tier="agent-7"))
        await store.register_graph(
            GraphInfo(graph_hash="h1", graph="g", tiers=["mini", "flagship"], targets={"mini": 0.9})
        )
        await store.register_graph(GraphInfo(graph_hash="h1", graph="g", tiers=["mini", "flagship"]))
        ref = Reference(graph="g", tier="mini", edges=[0.0, 0.5, 1.0], shares=[0.25, 0.75], tickets=40)
        await store.put_reference(ref)
        await store.put_reference(ref.model_copy(update={"tickets": 80}))
    snapshot = read_store(store_url)
    by_source = {lab.source: lab for lab in snapshot.labels}
    assert set(by_source) == {"shadow", "human"}
    assert (by_source["shadow"].label, by_source["shadow"].acceptable) == ("refund", False)
    assert by_source["human"].tier == "agent-7" and by_source["human"].acceptable is None
    assert [g.targets for g in snapshot.graphs] == [{}]
    assert [r.tickets for r in snapshot.references] == [80]


async def test_opening_twice_applies_each_migration_once(store_url: str) -> None:
    for _ in range(2):
        async with open_store(store_url) as store:
            await store.upsert(outcome("t-1"))
    if store_url.startswith("postgresql"):
        from triagegate.store.postgres import migrate_dsn

        assert await migrate_dsn(store_url) == []
        return
    with sqlite3.connect(store_url) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [v for v, _ in schema.SQLITE]


def test_both_dialects_have_the_same_migrations_and_tables() -> None:
    assert [v for v, _ in schema.SQLITE] == [v for v, _ in schema.POSTGRES]
    for (_, lite), (_, pg) in zip(schema.SQLITE, schema.POSTGRES, strict=True):
        tables = [line.split()[2] for line in lite.splitlines() if "CREATE TABLE" in line]
        assert tables and all(f"CREATE TABLE {t} " in pg for t in tables)


def test_a_missing_sqlite_store_is_a_config_error_not_an_empty_report(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no outcome store at"):
        read_store(str(tmp_path / "typo.sqlite"))
    assert not (tmp_path / "typo.sqlite").exists()


def test_a_postgresql_password_never_appears_in_a_description() -> None:
    shown = describe_store("postgresql://app:hunter2secret@db.example:5432/support")
    assert "hunter2secret" not in shown and shown == "postgresql://app:***@db.example:5432/support"
    assert describe_store("outcomes.sqlite") == "outcomes.sqlite"
