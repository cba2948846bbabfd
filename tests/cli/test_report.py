"""``triagegate report`` on a real SQLite store: the text, the JSON, the PNG and exit code 3."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.tuning.test_monitoring import snapshot
from triagegate.cli import main
from triagegate.store import open_store
from triagegate.store.sqlite import SqliteStore
from triagegate.tuning.monitoring import reference_histogram


def write_store(path: Path, right: int, wrong: int) -> str:
    data = snapshot(right, wrong)

    async def go() -> None:
        async with open_store(str(path)) as store:
            await store.upsert_many([s.outcome for s in data.outcomes])
            for label in data.labels:
                await store.put_label(label)
            for graph in data.graphs:
                await store.register_graph(graph)
            await store.put_reference(
                reference_histogram("g", "mini", [0.3 + 0.7 * i / 99 for i in range(100)])
            )

    asyncio.run(go())
    return str(path)


def test_report_prints_the_figures_and_exits_0_when_precision_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = write_store(tmp_path / "s.sqlite", right=90, wrong=0)
    png = tmp_path / "gate.png"
    assert main(["report", store, "--since", "24h", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "tickets: 100" in out and "tier mini: answered 90 (90.0%)" in out
    assert "kept precision: 1.000 [0.959, 1.000] (90/90), target 0.9" in out
    assert "confidence drift (PSI vs calibration)" in out and "of all-flagship" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_exits_3_when_the_lower_bound_is_under_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = write_store(tmp_path / "s.sqlite", right=80, wrong=10)
    assert main(["report", store, "--json"]) == 3
    figures = json.loads(capsys.readouterr().out)
    assert figures["tiers"][0]["alert"] is True and figures["tiers"][0]["precision"]["labelled"] == 90
    assert main(["report", store, "--target", "mini=0.5"]) == 0


def test_report_window_and_graph_hash_filter_the_outcomes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = write_store(tmp_path / "s.sqlite", right=90, wrong=0)
    assert main(["report", store, "--graph-hash", "other"]) == 0
    assert "tickets: 0" in capsys.readouterr().out
    reader = SqliteStore(store).connect()
    reader.db.execute("UPDATE outcomes SET created_at = created_at - 7200 WHERE ticket_id LIKE 'e-%'")
    reader.disconnect()
    assert main(["report", store, "--since", "1h"]) == 0
    assert "tickets: 90" in capsys.readouterr().out


def test_report_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "no outcome store at" in capsys.readouterr().err
    store = write_store(tmp_path / "s.sqlite", right=1, wrong=0)
    assert main(["report", store, "--since", "yesterday"]) == 2
    assert "give a duration such as 24h" in capsys.readouterr().err
    assert main(["report", store, "--target", "mini"]) == 2
