"""``triagegate calibrate --from-store``: refit the first tier's threshold on the store's labels and patch the graph."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.test_shadow import shadow_graph
from tests.tuning.test_monitoring import kept
from triagegate.cli import main
from triagegate.spec import load_spec
from triagegate.store import GraphInfo, Label, open_store, read_store
from triagegate.tuning.monitoring import labelled_predictions
from triagegate.types import GateDecision, NodeRun, Outcome


def drifted_store(path: Path, n: int = 400) -> str:
    """Kept tickets above 0.7: right above 0.85, right only half the time below it; every other one labelled."""
    rng = random.Random(5)
    outcomes, labels = [], []
    for i in range(n):
        confidence = 0.7 + 0.3 * i / n
        right = confidence >= 0.85 or rng.random() < 0.5
        outcomes.append(kept(i, "billing", confidence))
        if i % 2 == 0:
            labels.append(
                Label(ticket_id=f"t-{i}", source="shadow", label="billing" if right else "shipping")
            )
    escalated = Outcome(
        ticket_id="e-1",
        run_id="r",
        graph="shadow",
        graph_hash="h",
        route="flagship",
        category="shipping",
        decisions=[GateDecision(tier="mini", route="escalate", confidence=0.2, threshold=0.7)],
        nodes=[NodeRun(node="mini", cost_usd=0.0002), NodeRun(node="flagship", cost_usd=0.004)],
        cost_usd=0.0042,
    )

    async def go() -> None:
        async with open_store(str(path)) as store:
            await store.upsert_many([*outcomes, escalated])
            for label in labels:
                await store.put_label(label)
            await store.register_graph(GraphInfo(graph_hash="h", graph="shadow", tiers=["mini", "flagship"]))

    asyncio.run(go())
    return str(path)


def test_labelled_predictions_are_the_kept_labelled_tickets(tmp_path: Path) -> None:
    store = drifted_store(tmp_path / "s.sqlite")
    scored = labelled_predictions(read_store(store), "mini")
    assert len(scored) == 200 and all(c >= 0.7 for _, _, c in scored)
    assert {p for _, p, _ in scored} == {"billing"}


def test_calibrate_from_store_raises_the_threshold_and_records_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    store = drifted_store(tmp_path / "s.sqlite")
    graph = shadow_graph(tmp_path)
    args = ["calibrate", str(graph), "--from-store", store, "--target-accuracy", "0.97", "--resamples", "50"]
    assert main([*args, "--write"]) == 0
    out = capsys.readouterr().out
    assert "labels in the outcome store (shadow)" in out and f"patched {graph}" in out
    threshold = load_spec(graph).spec.gate_of("mini").threshold
    assert 0.8 <= threshold <= 0.9
    references = read_store(store).references
    assert [(r.graph, r.tier, r.tickets) for r in references] == [("shadow", "mini", 401)]


def test_calibrate_from_store_names_too_few_labels_and_needs_a_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = shadow_graph(tmp_path)
    empty = tmp_path / "empty.sqlite"
    asyncio.run(_create(empty))
    assert main(["calibrate", str(graph), "--from-store", str(empty), "--target-accuracy", "0.9"]) == 2
    assert "0 labelled tickets kept by tier 'mini'" in capsys.readouterr().err
    assert main(["calibrate", str(graph), "--target-accuracy", "0.9"]) == 2
    assert "give DATA, or --from-store STORE" in capsys.readouterr().err


async def _create(path: Path) -> None:
    async with open_store(str(path)):
        pass
