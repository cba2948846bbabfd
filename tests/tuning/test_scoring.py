"""The one triage runner behind eval and calibrate: production triage, and a replay miss caught by type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from tests.cli.test_calibrate import LOOPBACK, loopback
from tests.support.openai_server import OpenAIServer
from triagegate.cli import main
from triagegate.errors import ModelError, ReplayMiss
from triagegate.models.base import ChatRequest
from triagegate.replies import category_codes
from triagegate.spec import LoadedSpec, load_spec
from triagegate.tuning.scoring import triage_backend, triage_tickets
from triagegate.types import Ticket, Triage

GRAPH = Path(__file__).parent.parent / "graphs" / "scripted.yaml"


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    structlog.configure(**saved)


def run(tmp_path: Path, chat: Callable[[ChatRequest], str], texts: list[str], **options: str) -> list[Triage]:
    loaded: LoadedSpec = load_spec(GRAPH)
    _, backend = triage_backend(
        loaded, environ={}, cache_dir=tmp_path / "cache", extras={"scripted": {"mini": {"chat": chat}}}
    )
    tickets = [Ticket(id=f"t{i}", text=t) for i, t in enumerate(texts)]
    return asyncio.run(triage_tickets(loaded, tickets, backend, concurrency=2, **options))  # type: ignore[arg-type]


def answering(failure: Exception) -> Callable[[ChatRequest], str]:
    codes = {name: code for code, name in (category_codes(load_spec(GRAPH).spec) or {}).items()}

    def chat(request: ChatRequest) -> str:
        if "unrecorded" in request.messages[-1].text:
            raise failure
        reply = {"category": codes["billing"], "priority": "normal", "complexity": "low"}
        return json.dumps({**reply, "needs_vision": False, "answer": "ok", "confidence": 0.9})

    return chat


def test_a_replay_miss_raises_its_own_type(tmp_path: Path) -> None:
    miss = ReplayMiss("mini@replay: no recorded response for this triage request")
    with pytest.raises(ReplayMiss) as caught:
        run(tmp_path, answering(miss), ["charged twice", "an unrecorded ticket", "charged again"])
    assert caught.value is miss


def test_a_replay_miss_can_count_as_a_failed_triage(tmp_path: Path) -> None:
    miss = ReplayMiss("no recorded response")
    triages = run(tmp_path, answering(miss), ["charged twice", "an unrecorded ticket"], replay_misses="fail")
    assert [t.category for t in triages] == ["billing", "unknown"]
    assert triages[1].error is not None and triages[1].confidence_method == "none"


def test_an_error_that_quotes_a_replay_miss_is_an_ordinary_failure(tmp_path: Path) -> None:
    """Regression: calibrate searched failed triages' text for 'ReplayMiss: ' and raised on a provider's words."""
    quoting = ModelError("the gateway said: ReplayMiss: upstream cache empty")
    triages = run(tmp_path, answering(quoting), ["charged twice", "an unrecorded ticket"])
    assert triages[0].error is None and triages[0].category == "billing"
    assert triages[1].error is not None and "ReplayMiss: upstream" in triages[1].error


def test_eval_stops_on_a_replay_miss_naming_the_request(
    openai_server: OpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A recording that lacks a ticket cannot evaluate it: eval fails (exit 1), as calibrate does."""
    loopback(openai_server, monkeypatch)
    monkeypatch.setenv("TRIAGEGATE_CACHE_DIR", str(tmp_path / "cache"))
    rows = [f'"I was charged twice, case {n}",billing' for n in range(4)]
    rows += [f'"where is my parcel, case {n}",shipping' for n in range(4)]
    data = tmp_path / "tickets.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    recording = tmp_path / "calls.jsonl"
    assert main(["eval", str(LOOPBACK), str(data), "--json", "--record", str(recording)]) == 0
    live = json.loads(capsys.readouterr().out)
    openai_server.stop()
    assert main(["eval", str(LOOPBACK), str(data), "--json", "--replay", str(recording)]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["curve"] == live["curve"] and replayed["triage_errors"] == 0

    more = tmp_path / "more.csv"
    more.write_text(
        data.read_text(encoding="utf-8") + '"a ticket nobody recorded",billing\n', encoding="utf-8"
    )
    assert main(["eval", str(LOOPBACK), str(more), "--json", "--replay", str(recording)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no recorded response for this triage request to alias 'mini'" in captured.err
    assert "'a ticket nobody recorded'" in captured.err
