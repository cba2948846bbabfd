"""Recording model traffic and replaying it offline: round trips, misses, secrets, the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

import triagegate
from tests.support.openai_server import OpenAIServer
from triagegate.cli import main
from triagegate.errors import ConfigError, ModelError, ReplayMiss
from triagegate.models.base import ChatRequest, ClassifyRequest, ImagePart, JsonSchema, Message
from triagegate.models.recording import Recorder, canonical_request, request_key
from triagegate.models.replay import ReplayBackend, read_recording
from triagegate.types import Outcome

REPO = Path(__file__).resolve().parents[2]
GRAPH = REPO / "tests" / "graphs" / "loopback_openai.yaml"
KEY = "sk-test-recording-key-0123456789"
TICKETS = [
    {"id": "t1", "text": "I was charged twice this month"},
    {"id": "t2", "text": "please refund my order now"},
    {"id": "t3", "text": "where is my parcel?"},
]


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """The CLI configures logging for the process; put the test session's configuration back."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    structlog.configure(**saved)


def environ(server: OpenAIServer) -> dict[str, str]:
    return {
        "TRIAGEGATE_MINI_BASE_URL": server.base_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url,
        "TRIAGEGATE_MINI_API_KEY_ENV": "TG_TEST_KEY",
        "TRIAGEGATE_FLAGSHIP_API_KEY_ENV": "TG_TEST_KEY",
        "TG_TEST_KEY": KEY,
    }


def unsure_about_refunds(body: dict[str, Any]) -> float:
    """The mini is unsure about refund tickets, so they escalate (the graph's threshold is 0.7)."""
    return 0.3 if "refund" in json.dumps(body) else 0.95


def run_all(env: dict[str, str], **options: Any) -> list[Outcome]:
    async def go() -> list[Outcome]:
        async with triagegate.load(GRAPH, environ=env, **options) as pipeline:
            return [await pipeline.run(t) for t in TICKETS]

    return asyncio.run(go())


def comparable(outcome: Outcome) -> dict[str, Any]:
    """An Outcome without what differs between any two runs (ids, timings, the rebound graph's hash)."""
    data = outcome.model_dump(exclude={"run_id", "latency_ms", "graph_hash"})
    for node in data["nodes"]:
        node.pop("latency_ms")
    return data


def test_record_then_replay_offline_gives_identical_outcomes(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = unsure_about_refunds
    env = environ(openai_server)
    recording = tmp_path / "rec.jsonl"
    live = run_all(env, record=recording)
    assert [o.route for o in live] == ["mini", "flagship", "mini"] and all(o.status == "ok" for o in live)
    calls = openai_server.count
    lines = [json.loads(line) for line in recording.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == calls == 4  # three triage calls and one escalation
    assert [(e["alias"], e["node"], e["op"]) for e in lines].count(("flagship", "escalate", "chat")) == 1
    first = lines[0]
    assert first["key"] == request_key(first["request"]) and first["capabilities"]["logprobs"] is True
    assert first["response"]["logprobs"] and first["response"]["usage"]["input_tokens"] > 0

    openai_server.stop()
    replayed = run_all(env, replay=recording)
    assert [comparable(o) for o in replayed] == [comparable(o) for o in live]
    again = run_all({}, replay=recording)  # no server, no key, no base URLs at all
    assert [comparable(o) for o in again] == [comparable(o) for o in live]
    assert run_all(env)[0].status == "failed"  # the live models really are gone


def test_recordings_contain_no_api_key(openai_server: OpenAIServer, tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    run_all(environ(openai_server), record=recording)
    assert openai_server.request_headers[0]["authorization"] == f"Bearer {KEY}"
    text = recording.read_text(encoding="utf-8")
    assert KEY not in text and "Bearer" not in text and "authorization" not in text.lower()


def test_recorder_scrubs_secrets_a_model_echoes(tmp_path: Path) -> None:
    from triagegate.log import register_secret

    register_secret("registered-secret-value")
    recorder = Recorder(tmp_path / "r.jsonl", secrets=[KEY])
    recorder.write(
        {
            "response": {"text": f"your key is {KEY}, also registered-secret-value and Bearer abcdefghijkl"},
            "top": {KEY: -0.1},
        }
    )
    recorder.close()
    text = (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    assert KEY not in text and "registered-secret-value" not in text and "abcdefghijkl" not in text
    assert text.count("[REDACTED]") == 4


def test_a_replay_miss_names_the_request_and_how_to_record_it(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    recording = tmp_path / "rec.jsonl"
    run_all(environ(openai_server), record=recording)

    async def go() -> Outcome:
        async with triagegate.load(GRAPH, environ={}, replay=recording) as pipeline:
            return await pipeline.run("My order arrived broken and nobody answers my emails")

    outcome = asyncio.run(go())
    assert outcome.status == "failed"
    message = outcome.errors[0]
    assert "ReplayMiss" in message and "triage request to alias 'mini'" in message
    assert "'My order arrived broken and nobody answers my emails'" in message
    assert f"--record {recording}" in message and "key " in message


def test_replay_backend_from_a_graph_binding(tmp_path: Path) -> None:
    recording = tmp_path / "recordings" / "calls.jsonl"
    request = ClassifyRequest(text="charged twice", labels=("billing", "shipping"))
    canonical = canonical_request("recorded-mini", request)
    entry = {
        "format": "triagegate-recording/1",
        "key": request_key(canonical),
        "alias": "recorded-mini",
        "op": "classify",
        "node": "triage",
        "capabilities": {"chat": False, "classify": True, "vision": False, "logprobs": False},
        "request": canonical,
        "response": {
            "probabilities": {"billing": 0.8, "shipping": 0.2},
            "model": "tfidf",
            "endpoint": "recorded-mini@classifier",
            "usage": {"requests": 1},
            "latency_ms": 0.1,
        },
    }
    recording.parent.mkdir()
    recording.write_text(json.dumps(entry) + "\n" + '{"format": "triagegate-rec', encoding="utf-8")
    doc = yaml.safe_load((REPO / "tests" / "graphs" / "scripted.yaml").read_text(encoding="utf-8"))
    doc["prompts"] = str(REPO / "prompts")
    doc["models"]["mini"] = {
        "backend": "replay",
        "options": {"recording": "recordings/calls.jsonl", "alias": "recorded-mini"},
    }
    doc["models"]["flagship"] = {"backend": "replay", "options": {"recording": "recordings/calls.jsonl"}}
    graph = tmp_path / "graph.yaml"
    graph.write_text(yaml.safe_dump(doc), encoding="utf-8")
    pipeline = triagegate.load(graph, environ={})
    mini = pipeline.backends["mini"]
    assert isinstance(mini, ReplayBackend) and mini.capabilities.classify and not mini.capabilities.chat
    result = asyncio.run(mini.classify(request))
    assert (
        result.probabilities == {"billing": 0.8, "shipping": 0.2}
        and result.endpoint == "recorded-mini@classifier"
    )
    with pytest.raises(ReplayMiss, match="triage request to alias 'recorded-mini'"):
        asyncio.run(mini.classify(ClassifyRequest(text="something else", labels=("billing", "shipping"))))

    doc["models"]["mini"]["options"] = {"recording": "missing.jsonl"}
    graph.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"missing\.jsonl \[models\.mini\]: recording not found"):
        triagegate.load(graph, environ={})
    recording.write_text("not json\n{}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"calls\.jsonl:1"):
        read_recording(recording)


def test_recorded_failures_replay_as_the_same_error(openai_server: OpenAIServer, tmp_path: Path) -> None:
    from tests.support.openai_server import Status

    openai_server.script("mini-model", Status(400))
    recording = tmp_path / "rec.jsonl"
    live = run_all(environ(openai_server), record=recording)
    openai_server.stop()
    replayed = run_all({}, replay=recording)
    assert live[0].route == replayed[0].route == "flagship"
    assert "triage_failed" in live[0].escalation_reasons and "triage_failed" in replayed[0].escalation_reasons
    assert "HTTP 400" in live[0].errors[0] and "(replayed)" in replayed[0].errors[0]
    assert replayed[0].errors[0].startswith("triage failed: ModelError: (replayed)")
    assert [comparable(o) for o in replayed[1:]] == [comparable(o) for o in live[1:]]


def test_keys_depend_on_the_request_content_only() -> None:
    def chat(text: str, **params: Any) -> ChatRequest:
        image = ImagePart("data:image/png;base64," + "A" * 1000)
        return ChatRequest(messages=(Message("user", text, (image,)),), **params)

    base = request_key(canonical_request("mini", chat("hi")))
    assert base == request_key(canonical_request("mini", chat("hi")))
    assert base != request_key(canonical_request("flagship", chat("hi")))
    assert base != request_key(canonical_request("mini", chat("hi", max_tokens=5)))
    assert base != request_key(canonical_request("mini", chat("hi", json_schema=JsonSchema("triage", {}))))
    stored = json.dumps(canonical_request("mini", chat("hi")))
    assert "AAAA" not in stored and "data-sha256:" in stored


def test_cli_run_and_eval_record_and_replay(
    openai_server: OpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ(openai_server).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRIAGEGATE_CACHE_DIR", str(tmp_path / "cache"))
    recording = tmp_path / "cli.jsonl"
    args = ["run", str(GRAPH), "I was charged twice", "--id", "x1", "--json"]
    assert main([*args, "--record", str(recording)]) == 0
    live = Outcome.model_validate_json(capsys.readouterr().out)
    data = tmp_path / "labeled.csv"
    data.write_text(
        "text,label\nI was charged twice,billing\nwhere is my parcel,shipping\n", encoding="utf-8"
    )
    assert main(["eval", str(GRAPH), str(data), "--json", "--record", str(recording)]) == 0
    live_report = json.loads(capsys.readouterr().out)
    openai_server.stop()

    assert main([*args, "--replay", str(recording)]) == 0
    assert comparable(Outcome.model_validate_json(capsys.readouterr().out)) == comparable(live)
    monkeypatch.setenv("TRIAGEGATE_REPLAY", str(recording))
    assert main(["eval", str(GRAPH), str(data), "--json"]) == 0
    replayed_report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "curve", "gate", "at_threshold", "triage_errors"):
        assert replayed_report[key] == live_report[key]
    assert replayed_report["triage_errors"] == 0


def test_recording_wrapper_passes_model_errors_through(tmp_path: Path) -> None:
    from triagegate.models.recording import RecordingBackend
    from triagegate.models.scripted import ScriptedBackend
    from triagegate.spec import ModelBinding

    def broken(request: ChatRequest) -> str:
        raise ModelError("boom", model="m", status=503)

    recorder = Recorder(tmp_path / "r.jsonl")
    backend = RecordingBackend(
        "mini", ScriptedBackend("mini", ModelBinding(backend="scripted"), chat=broken), recorder
    )
    with pytest.raises(ModelError, match="boom"):
        asyncio.run(backend.chat(ChatRequest(messages=(Message("user", "hi"),))))
    asyncio.run(backend.aclose())
    line = json.loads((tmp_path / "r.jsonl").read_text(encoding="utf-8"))
    assert (
        line["error"] == {"type": "ModelError", "message": "boom", "status": 503} and "response" not in line
    )


def test_cli_batch_records_and_replays(
    openai_server: OpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    openai_server.code_confidence = unsure_about_refunds
    for name, value in environ(openai_server).items():
        monkeypatch.setenv(name, value)
    tickets = tmp_path / "in.jsonl"
    tickets.write_text("".join(json.dumps(t) + "\n" for t in TICKETS), encoding="utf-8")
    recording = tmp_path / "batch.jsonl"
    live_out, replay_out = tmp_path / "live.jsonl", tmp_path / "replayed.jsonl"
    assert main(["batch", str(GRAPH), str(tickets), "-o", str(live_out), "--record", str(recording)]) == 0
    openai_server.stop()
    assert main(["batch", str(GRAPH), str(tickets), "-o", str(replay_out), "--replay", str(recording)]) == 0
    capsys.readouterr()

    def outcomes(path: Path) -> dict[str, dict[str, Any]]:
        found = [Outcome.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {o.ticket_id: comparable(o) for o in found}

    live, replayed = outcomes(live_out), outcomes(replay_out)
    assert set(live) == {"t1", "t2", "t3"} and replayed == live
    assert live["t2"]["route"] == "flagship"


def test_recorded_alternatives_replay_as_they_were_read() -> None:
    from triagegate.models.base import ChatResult, MalformedLogprobs, RawAlternatives, TokenLogprob
    from triagegate.models.recording import chat_response
    from triagegate.models.replay import _alternatives
    from triagegate.types import Usage

    result = ChatResult(
        text="AB",
        model="m",
        endpoint="e",
        usage=Usage(),
        latency_ms=1.0,
        logprobs=(
            TokenLogprob("A", -0.1, RawAlternatives([{"token": "A", "logprob": -0.1}])),
            TokenLogprob("B", -0.2, RawAlternatives([{"token": "B"}])),
        ),
    )
    recorded = json.loads(json.dumps(chat_response(result)))["logprobs"]
    assert recorded[0]["top"] == {"A": -0.1}
    assert recorded[1]["top"] == [{"token": "B"}]
    good, bad = (_alternatives(t["top"]) for t in recorded)
    assert dict(good) == {"A": -0.1}
    with pytest.raises(MalformedLogprobs):
        dict(bad)


@pytest.mark.parametrize(
    ("kinds", "served"),
    [
        (["error", "stopped", "whole"], "whole"),
        (["whole", "stopped", "error"], "whole"),
        (["stopped", "whole"], "whole"),
        (["error", "stopped"], "stopped"),
        (["stopped", "error"], "stopped"),
        (["whole", "whole2"], "whole2"),
    ],
)
def test_a_whole_reply_wins_over_a_stopped_one_and_either_over_a_failure(
    tmp_path: Path, kinds: list[str], served: str
) -> None:
    """Whatever order the lines were appended in (streamed calls stopped early record what arrived)."""
    request = ChatRequest(messages=(Message("user", "hello"),), top_logprobs=5)
    canonical = canonical_request("mini", request)
    key = request_key(canonical)

    def line(kind: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"format": "triagegate-recording/1", "key": key, "alias": "mini"}
        entry["op"], entry["request"] = "chat", canonical
        if kind == "error":
            entry["error"] = {"type": "ModelUnavailable", "message": "down", "status": 503}
        else:
            entry["response"] = {"text": kind, "model": "m", "usage": {}, "logprobs": None}
            if kind == "stopped":
                entry["response"]["stopped_early"] = True
        return entry

    path = tmp_path / "rec.jsonl"
    path.write_text("".join(json.dumps(line(kind)) + "\n" for kind in kinds))
    backend = ReplayBackend("mini", read_recording(path))
    if served == "stopped":
        with pytest.raises(ReplayMiss, match="stopped early when recorded"):
            asyncio.run(backend.chat(request))
        assert read_recording(path).entries[key]["response"]["text"] == "stopped"
    else:
        assert asyncio.run(backend.chat(request)).text == served


def _graph_with_early(tmp_path: Path, early: bool, threshold: float) -> Path:
    """tests/graphs/loopback_openai.yaml with the gate's ``early`` switch and threshold set."""
    raw = yaml.safe_load(GRAPH.read_text(encoding="utf-8"))
    raw["prompts"] = str(REPO / "prompts")
    raw["gate"].update({"early": early, "threshold": threshold})
    path = tmp_path / f"early-{early}-{threshold}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _run_graph(graph: Path, env: dict[str, str], **options: Any) -> list[Outcome]:
    async def go() -> list[Outcome]:
        async with triagegate.load(graph, environ=env, **options) as pipeline:
            return [await pipeline.run(t) for t in TICKETS]

    return asyncio.run(go())


@pytest.mark.parametrize("early", [True, False])
def test_early_false_records_whole_replies_that_replay_at_another_threshold(
    openai_server: OpenAIServer, tmp_path: Path, early: bool
) -> None:
    openai_server.code_confidence = unsure_about_refunds
    recording = tmp_path / "rec.jsonl"
    live = _run_graph(_graph_with_early(tmp_path, early, 0.7), environ(openai_server), record=recording)
    assert [o.route for o in live] == ["mini", "flagship", "mini"]
    mini = [json.loads(line) for line in recording.read_text(encoding="utf-8").splitlines()]
    refund = next(e for e in mini if e["node"] == "triage" and "refund" in json.dumps(e["request"]))
    assert bool(refund["response"].get("stopped_early")) is early
    openai_server.stop()
    lenient = _graph_with_early(tmp_path, early, 0.2)
    replayed = _run_graph(lenient, {}, replay=recording)
    if early:
        assert replayed[1].status == "failed"
        assert "the recorded reply was stopped early" in " ".join(replayed[1].errors)
        return
    assert replayed[1].route == "mini" and replayed[1].confidence == pytest.approx(0.3, abs=1e-6)
    assert [o.route for o in replayed] == ["mini", "mini", "mini"]
