"""``serve --store``: every Outcome and shadow verdict in the store, and the report's figures on /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import triagegate
from tests.serve.conftest import Service
from tests.support.openai_server import OpenAIServer
from tests.test_shadow import environ, shadow_graph
from triagegate.store import read_store


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_served_outcomes_and_shadow_verdicts_reach_the_store_and_metrics(
    serve: Callable[..., Service], openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.95
    store = str(tmp_path / "served.sqlite")
    pipeline = triagegate.load(shadow_graph(tmp_path), environ=environ(openai_server))
    service = serve(pipeline, store=store, report_refresh_s=0.0)
    for i in range(3):
        reply = service.client.post("/v1/tickets", json={"id": f"T-{i}", "text": "I was charged twice."})
        assert reply.status_code == 200 and reply.json()["shadow"]["status"] == "scheduled"
    deadline = time.monotonic() + 20
    metrics: Any = ""
    while time.monotonic() < deadline:
        metrics = service.client.get("/metrics").text
        # One scrape reads the shadow counters before the store, so a run finishing in between
        # shows in the store's figures first and in the counters on the next scrape.
        labels = gauge(metrics, 'triagegate_report_kept_labels{tier="mini"}')
        if labels == 3 and gauge(metrics, 'triagegate_shadow_runs{tier="mini"}') == 3:
            break
        time.sleep(0.1)
    assert gauge(metrics, "triagegate_report_tickets") == 3
    assert gauge(metrics, 'triagegate_report_tier_share{tier="mini"}') == 1.0
    assert gauge(metrics, 'triagegate_report_kept_precision{bound="estimate",tier="mini"}') == 1.0
    low = gauge(metrics, 'triagegate_report_kept_precision{bound="low",tier="mini"}')
    assert low is not None and low < 0.9
    assert gauge(metrics, 'triagegate_report_precision_alert{tier="mini"}') == 1.0
    assert gauge(metrics, 'triagegate_shadow_runs{tier="mini"}') == 3
    service.close()
    snapshot = read_store(store)
    assert sorted(s.outcome.ticket_id for s in snapshot.outcomes) == ["T-0", "T-1", "T-2"]
    assert sorted(lab.ticket_id for lab in snapshot.labels) == ["T-0", "T-1", "T-2"]
    assert openai_server.model_counts == {"mini-model": 3, "flagship-model": 3}
