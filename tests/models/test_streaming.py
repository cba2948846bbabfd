"""Streaming with an early stop (``chat_until``) over real HTTP against the loopback server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.openai_server import (
    Cut,
    Delay,
    OpenAIServer,
    Reply,
    Stall,
    Status,
    StreamError,
    _timing,
    tokenize,
)
from triagegate.confidence import early_field_distribution
from triagegate.errors import ModelError, ModelTimeout, ModelUnavailable, ReplayMiss
from triagegate.models import (
    BuildContext,
    ChatRequest,
    ChatResult,
    JsonSchema,
    Message,
    ModelBackend,
    build_backend,
)
from triagegate.models.base import PartialReply, StreamVerdict, chat_until
from triagegate.models.recording import Recorder, RecordingBackend
from triagegate.models.replay import ReplayBackend, read_recording
from triagegate.models.scripted import ScriptedBackend
from triagegate.replies import EarlyGate, EarlyTriage, early_triage, parse_triage
from triagegate.spec import GraphSpec, ModelBinding, parse_spec
from triagegate.types import Usage

FAST = {"retry_base": 0.01, "retry_cap": 0.05}
CATEGORIES = ["billing", "technical", "shipping"]
CODES = ["A", "B", "C"]
TRIAGE_SCHEMA = JsonSchema(
    name="triage",
    schema={
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": CODES},
            "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
            "complexity": {"type": "string", "enum": ["low", "medium", "high"]},
            "needs_vision": {"type": "boolean"},
            "answer": {"type": "string"},
            "confidence": {"type": "number"},
        },
        "required": ["category", "priority", "complexity", "needs_vision", "answer", "confidence"],
        "additionalProperties": False,
    },
)
TRIAGE = ChatRequest(
    messages=(
        Message("system", "Triage the ticket."),
        Message("user", "<ticket>I was charged twice</ticket>"),
    ),
    json_schema=TRIAGE_SCHEMA,
    max_tokens=200,
    top_logprobs=20,
)
HELLO = ChatRequest(messages=(Message("system", "Be brief."), Message("user", "Hello there")), max_tokens=20)
Build = Callable[..., ModelBackend]


def binding(server: OpenAIServer, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "backend": "openai",
        "model": "mini-model",
        "base_url": server.base_url,
        "capabilities": {"logprobs": True},
        "price": {"input": 1.0, "output": 4.0},
        "max_retries": 2,
        "timeout": 5,
        "options": dict(FAST),
    }
    return {**base, **overrides}


def graph(models: dict[str, Any]) -> str:
    first = next(iter(models))
    return yaml.safe_dump(
        {
            "models": models,
            "taxonomy": {"categories": [{"name": name} for name in CATEGORIES]},
            "nodes": {n: {"model": first, "prompt": n} for n in ("triage", "answer", "escalate")},
        }
    )


SPEC: GraphSpec = parse_spec(graph({"mini": {"backend": "scripted"}}), environ={}).spec


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Build]:
    built: list[ModelBackend] = []

    def make(models: dict[str, Any], alias: str | None = None) -> ModelBackend:
        loaded = parse_spec(graph(models), environ={})
        context = BuildContext(loaded=loaded, environ={}, cache_dir=tmp_path)
        name = alias or next(iter(models))
        backend = build_backend(name, loaded.spec.models[name], context)
        built.append(backend)
        return backend

    yield make
    for backend in built:
        await backend.aclose()


class Seen:
    """A ``decide`` that records what it was shown and answers from a rule."""

    def __init__(self, rule: Callable[[PartialReply], StreamVerdict | None] = lambda p: None) -> None:
        self.rule = rule
        self.partials: list[PartialReply] = []

    def __call__(self, partial: PartialReply) -> StreamVerdict | None:
        self.partials.append(partial)
        return self.rule(partial)


def stop_at_code(partial: PartialReply) -> StreamVerdict | None:
    """Stop as soon as the category's option code has arrived (the early gate escalating)."""
    if early_field_distribution(partial.logprobs, "category", CODES, complete=partial.complete) is None:
        return None
    return "stop"


def tokens_of(result: ChatResult) -> list[tuple[str, float, dict[str, float]]]:
    return [(t.token, t.logprob, dict(t.top)) for t in result.logprobs or ()]


def same_reply(streamed: ChatResult, whole: ChatResult) -> None:
    assert streamed.text == whole.text
    assert tokens_of(streamed) == tokens_of(whole)
    assert (streamed.logprobs is None) == (whole.logprobs is None)
    assert streamed.usage == whole.usage
    assert (streamed.finish_reason, streamed.warnings) == (whole.finish_reason, whole.warnings)
    assert (streamed.model, streamed.endpoint, streamed.stopped_early) == (whole.model, whole.endpoint, False)


@pytest.mark.parametrize(
    ("request_", "script"),
    [
        (TRIAGE, None),
        (HELLO, None),
        (TRIAGE, Reply('{"category": "B", "answer": "hi"}', finish_reason="length")),
        (HELLO, Reply("no usage here", omit_usage=True)),
        (HELLO, Reply("", usage=(3, 0))),
    ],
)
async def test_a_stream_read_to_the_end_equals_the_plain_reply(
    server: OpenAIServer, build: Build, request_: ChatRequest, script: Reply | None
) -> None:
    backend = build({"mini": binding(server)})
    if script is not None:
        server.script("mini-model", script, script)
    whole = await backend.chat(request_)
    seen = Seen()
    streamed = await chat_until(backend, request_, seen)

    same_reply(streamed, whole)
    assert server.requests[1]["stream"] is True
    assert server.requests[1]["stream_options"] == {"include_usage": True}
    assert "stream" not in server.requests[0]
    assert seen.partials[-1] == PartialReply(whole.text, seen.partials[-1].logprobs, complete=True)
    assert [p.complete for p in seen.partials].count(True) == 1
    texts = [p.text for p in seen.partials[:-1]]
    assert texts == sorted(texts, key=len) and all(whole.text.startswith(t) for t in texts)
    assert server.wait_for_streams(1)[0].done


@pytest.mark.parametrize("mode", ["omit", "null", "malformed", "unaligned"])
async def test_a_stream_carries_odd_logprobs_as_the_plain_reply_does(
    server: OpenAIServer, build: Build, mode: str
) -> None:
    server.logprobs_mode = mode
    backend = build({"mini": binding(server)})
    whole = await backend.chat(TRIAGE)
    streamed = await chat_until(backend, TRIAGE, Seen())
    assert streamed.text == whole.text and streamed.usage == whole.usage
    if mode == "malformed":
        assert [t.token for t in streamed.logprobs or ()] == [t.token for t in whole.logprobs or ()]
    else:
        same_reply(streamed, whole)


async def test_stopping_at_the_option_code_cancels_the_rest_of_the_reply(
    server: OpenAIServer, build: Build
) -> None:
    server.timing = {"mini-model": (0.05, 0.02)}
    backend = build({"mini": binding(server)})
    whole = await backend.chat(TRIAGE)
    tokens_in_reply = len(tokenize(whole.text))

    started = time.perf_counter()
    result = await chat_until(backend, TRIAGE, stop_at_code)
    elapsed = time.perf_counter() - started

    assert result.stopped_early and result.finish_reason is None
    assert result.text == '{"category": "A'
    assert whole.text.startswith(result.text)
    assert [t.token for t in result.logprobs or ()] == tokenize(result.text)
    full_time = 0.05 + 0.02 * (tokens_in_reply - 1)
    assert elapsed < full_time - 0.2
    log = server.wait_for_streams(1)[0]
    assert log.client_left and not log.done
    assert log.sent <= len(result.logprobs or ()) + 2 < log.tokens == tokens_in_reply
    assert server.status_counts[499] == 1


async def test_a_stopped_reply_counts_its_usage(server: OpenAIServer, build: Build) -> None:
    backend = build({"mini": binding(server)})
    result = await chat_until(backend, TRIAGE, stop_at_code)
    prompt_chars = sum(len(m.text) for m in TRIAGE.messages)
    output = len(result.logprobs or ())
    assert output == len(tokenize('{"category": "A'))
    assert result.usage == Usage(
        input_tokens=-(-prompt_chars // 4),
        output_tokens=output,
        cost_usd=(-(-prompt_chars // 4) * 1.0 + output * 4.0) / 1_000_000,
        requests=1,
    )
    assert result.warnings == ("usage_estimated:stopped_early",)


async def test_without_logprobs_a_stop_still_counts_what_arrived(server: OpenAIServer, build: Build) -> None:
    backend = build({"mini": binding(server, capabilities={"logprobs": False})})
    result = await chat_until(backend, TRIAGE, lambda p: "stop" if '"A"' in p.text else None)
    assert result.stopped_early and result.logprobs is None
    assert result.text.endswith('"A"')
    assert result.usage.output_tokens == -(-len(result.text) // 4)


async def test_streams_read_to_the_end_reuse_their_connection(server: OpenAIServer, build: Build) -> None:
    """Regression: stopping at ``data: [DONE]`` without reading the body's end dropped the connection."""
    backend = build({"mini": binding(server)})
    for _ in range(3):
        await chat_until(backend, TRIAGE, Seen())
    assert len(server.peers) == 3 and len(set(server.peers)) == 1


async def test_a_server_that_does_not_stream_is_read_as_one_completion(
    server: OpenAIServer, build: Build
) -> None:
    backend = build({"mini": binding(server)})
    whole = await backend.chat(TRIAGE)
    server.stream_replies = False
    seen = Seen(stop_at_code)
    result = await chat_until(backend, TRIAGE, seen)
    same_reply(result, whole)
    assert len(seen.partials) == 1 and seen.partials[0].complete
    assert server.streams == []


async def test_finish_reads_to_the_end_without_asking_again(server: OpenAIServer, build: Build) -> None:
    backend = build({"mini": binding(server)})
    seen = Seen(lambda p: "finish" if len(p.logprobs) >= 2 else None)
    result = await chat_until(backend, TRIAGE, seen)
    assert not result.stopped_early and result.finish_reason == "stop"
    assert len(seen.partials) == 2 and not seen.partials[-1].complete
    assert server.wait_for_streams(1)[0].done


@pytest.mark.parametrize("abrupt", [True, False])
async def test_a_cut_stream_is_retried_then_succeeds(
    server: OpenAIServer, build: Build, abrupt: bool
) -> None:
    server.script("mini-model", Cut(after_tokens=5, abrupt=abrupt))
    backend = build({"mini": binding(server)})
    seen = Seen()
    result = await chat_until(backend, TRIAGE, seen)
    assert not result.stopped_early and result.usage.requests == 2
    assert json.loads(result.text)["category"] == "A"
    first_try = [p for p in seen.partials if len(p.logprobs) == 1]
    assert len(first_try) == 2, "decide starts over with the retried reply"


async def test_a_stream_cut_every_time_is_a_retryable_model_error(server: OpenAIServer, build: Build) -> None:
    server.script("mini-model", *[Cut(after_tokens=4)] * 3)
    backend = build({"mini": binding(server)})
    with pytest.raises(ModelUnavailable, match="broke off mid-reply") as info:
        await chat_until(backend, TRIAGE, Seen())
    assert "after 3 attempts" in str(info.value)
    assert server.count == 3


async def test_a_stream_that_ends_without_done_is_a_model_error(server: OpenAIServer, build: Build) -> None:
    server.script("mini-model", *[Cut(after_tokens=4, abrupt=False)] * 3)
    with pytest.raises(ModelUnavailable, match="ended mid-reply"):
        await chat_until(build({"mini": binding(server)}), TRIAGE, Seen())


async def test_an_error_event_mid_stream_is_retried(server: OpenAIServer, build: Build) -> None:
    server.script("mini-model", StreamError(after_tokens=5, message="overloaded"))
    backend = build({"mini": binding(server)})
    result = await chat_until(backend, TRIAGE, Seen())
    assert result.usage.requests == 2 and json.loads(result.text)["category"] == "A"
    server.script("mini-model", *[StreamError(after_tokens=1)] * 3)
    with pytest.raises(ModelUnavailable, match="the stream reported an error: the server had an error"):
        await chat_until(backend, TRIAGE, Seen())


async def test_a_stalled_stream_is_bounded_by_the_timeout(server: OpenAIServer, build: Build) -> None:
    backend = build({"mini": binding(server, timeout=0.4, max_retries=1)})
    await backend.chat(HELLO)  # set the client up first: the bound is for the stream alone
    server.script("mini-model", Stall(after_tokens=4, seconds=30), Stall(after_tokens=4, seconds=30))
    started = time.perf_counter()
    with pytest.raises(ModelTimeout, match="stalled"):
        await chat_until(backend, TRIAGE, Seen())
    assert time.perf_counter() - started < 2.0
    assert [log.sent for log in server.wait_for_streams(2)] == [4, 4]
    assert all(log.client_left for log in server.streams)


async def test_a_stall_shorter_than_the_timeout_is_waited_out(server: OpenAIServer, build: Build) -> None:
    server.script("mini-model", Stall(after_tokens=4, seconds=0.2))
    result = await chat_until(build({"mini": binding(server)}), TRIAGE, Seen())
    assert result.usage.requests == 1 and json.loads(result.text)["category"] == "A"


async def test_errors_before_the_stream_are_those_of_chat(server: OpenAIServer, build: Build) -> None:
    server.script("mini-model", Status(500), Delay(0.01, then=Status(429, retry_after=0.01)))
    backend = build({"mini": binding(server)})
    result = await chat_until(backend, TRIAGE, Seen())
    assert result.usage.requests == 3
    server.script("mini-model", Status(404))
    with pytest.raises(ModelError, match="404") as info:
        await chat_until(backend, TRIAGE, Seen())
    assert info.value.status == 404


async def test_early_stop_works_through_the_sharded_pool(server: OpenAIServer, build: Build) -> None:
    """Regression: the sharded transport (large pools) read every body whole before returning it."""
    server.timing = {"mini-model": (0.0, 0.02)}
    backend = build({"mini": binding(server, max_concurrency=64)})
    results = await asyncio.gather(*(chat_until(backend, TRIAGE, stop_at_code) for _ in range(4)))
    assert all(r.stopped_early for r in results)
    logs = server.wait_for_streams(4)
    assert all(log.client_left and log.sent < log.tokens for log in logs)


async def test_a_fallback_chain_streams_from_the_next_endpoint(server: OpenAIServer, build: Build) -> None:
    with OpenAIServer(timing={None: (0.0, 0.01)}) as backup:
        server.script("mini-model", *[Cut(after_tokens=2)] * 2)
        chain = build(
            {
                "mini": {**binding(server, max_retries=1), "fallbacks": ["backup"]},
                "backup": binding(backup, model="backup-model"),
            }
        )
        result = await chat_until(chain, TRIAGE, stop_at_code)
        assert result.stopped_early and result.endpoint.startswith("backup@")
        assert backup.wait_for_streams(1)[0].client_left
        assert server.model_counts["mini-model"] == 2 and backup.model_counts == {"backup-model": 1}


def scripted(chat: Callable[[ChatRequest], Any], *, logprobs: bool = True) -> ScriptedBackend:
    return ScriptedBackend(
        "mini",
        ModelBinding(
            backend="scripted", price={"input": 1.0, "output": 4.0}, capabilities={"logprobs": logprobs}
        ),
        chat=chat,
    )


async def test_a_backend_that_cannot_stream_is_asked_once_on_the_whole_reply(tmp_path: Path) -> None:
    backend = build_backend(
        "mini",
        ModelBinding(backend="scripted"),
        BuildContext(
            loaded=parse_spec(graph({"mini": {"backend": "scripted"}}), environ={}),
            environ={},
            cache_dir=tmp_path,
            extras={"scripted": {"mini": {"chat": lambda r: "plain text"}}},
        ),
    )
    seen = Seen(lambda p: "stop")
    result = await chat_until(backend, HELLO, seen)
    assert (result.text, result.stopped_early) == ("plain text", False)
    assert seen.partials == [PartialReply("plain text", (), complete=True)]


async def test_a_scripted_reply_with_logprobs_stops_where_a_stream_would(
    server: OpenAIServer, build: Build
) -> None:
    live = build({"mini": binding(server)})
    whole = await live.chat(TRIAGE)
    backend = scripted(lambda r: whole)
    result = await chat_until(backend, TRIAGE, stop_at_code)
    assert result.stopped_early and result.text == '{"category": "A'
    assert result.usage.output_tokens == len(result.logprobs or ()) == len(tokenize(result.text)) == 7
    assert result.usage.input_tokens == whole.usage.input_tokens


async def test_record_and_replay_a_stopped_stream(server: OpenAIServer, build: Build, tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path)
    recording = RecordingBackend("mini", build({"mini": binding(server)}), recorder)
    live = await chat_until(recording, TRIAGE, stop_at_code)
    recorder.close()
    line = json.loads(path.read_text())
    assert line["response"]["stopped_early"] is True and line["response"]["text"] == live.text

    replay = ReplayBackend("mini", read_recording(path))
    again = await chat_until(replay, TRIAGE, stop_at_code)
    assert (again.text, tokens_of(again), again.usage, again.stopped_early) == (
        live.text,
        tokens_of(live),
        live.usage,
        True,
    )
    with pytest.raises(ReplayMiss, match="stopped early when recorded"):
        await replay.chat(TRIAGE)
    with pytest.raises(ReplayMiss, match="reads further"):
        await chat_until(replay, TRIAGE, Seen())


async def test_a_whole_recorded_reply_replays_under_any_early_stop(
    server: OpenAIServer, build: Build, tmp_path: Path
) -> None:
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path)
    live_backend = build({"mini": binding(server)})
    recording = RecordingBackend("mini", live_backend, recorder)
    whole = await chat_until(recording, TRIAGE, Seen())
    stopped_live = await chat_until(live_backend, TRIAGE, stop_at_code)
    await chat_until(recording, TRIAGE, stop_at_code)
    recorder.close()

    replay = ReplayBackend(
        "mini", read_recording(path), price=ModelBinding(backend="x", price={"output": 4.0}).price
    )
    assert (await replay.chat(TRIAGE)).text == whole.text, "the whole reply wins over the stopped one"
    seen = Seen()
    assert (await chat_until(replay, TRIAGE, seen)).text == whole.text
    assert seen.partials[-1].complete
    cut = await chat_until(replay, TRIAGE, stop_at_code)
    assert (cut.text, tokens_of(cut), cut.stopped_early) == (stopped_live.text, tokens_of(stopped_live), True)
    assert cut.usage == Usage(
        input_tokens=whole.usage.input_tokens,
        output_tokens=7,
        cost_usd=7 * 4.0 / 1_000_000,
        requests=1,
    )


@pytest.mark.parametrize("confidence", [0.3, 0.95])
async def test_the_early_gate_reads_what_parse_triage_reads(
    server: OpenAIServer, build: Build, confidence: float
) -> None:
    server.code_confidence = confidence
    server.choose = lambda field, values, body: values[1] if field == "category" else values[0]
    backend = build({"mini": binding(server)})
    whole = await backend.chat(TRIAGE)
    triage = parse_triage(whole, SPEC, TRIAGE)

    gate = EarlyGate(SPEC, TRIAGE, lambda early: early.confidence < 0.8)
    result = await chat_until(backend, TRIAGE, gate)

    assert gate.reading is not None
    assert (gate.reading.category, gate.reading.confidence, gate.reading.alternatives) == (
        triage.category,
        triage.confidence,
        triage.alternatives,
    )
    assert gate.reading.category == "technical"
    assert gate.stopped is result.stopped_early is (confidence < 0.8)
    if result.stopped_early:
        assert result.text == '{"category": "B'
    else:
        assert parse_triage(result, SPEC, TRIAGE) == triage


def test_early_triage_before_the_code_and_without_logprobs() -> None:
    def partial(*tokens: str) -> PartialReply:
        from triagegate.models.base import TokenLogprob

        return PartialReply("".join(tokens), tuple(TokenLogprob(t, -0.1, {t: -0.1}) for t in tokens))

    assert early_triage(partial('{"', "category", '":', ' "'), SPEC, TRIAGE) is None
    reading = early_triage(partial('{"', "category", '":', ' "', "C"), SPEC, TRIAGE)
    assert reading == EarlyTriage(category="shipping", confidence=1.0, alternatives={}, tokens=5)

    no_logprobs = EarlyGate(SPEC, HELLO, lambda early: True)
    assert no_logprobs(partial('{"')) == "finish" and no_logprobs.reason == "no_logprobs"
    bad_code = EarlyGate(SPEC, TRIAGE, lambda early: True)
    assert bad_code(partial('{"category": "', "Z")) == "finish"
    assert bad_code.reason == "no_option_code" and bad_code.reading is None


async def test_the_standalone_server_paces_streams_from_its_flags(build: Build) -> None:
    script = Path(__file__).parents[1] / "support" / "openai_server.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--port",
        "0",
        "--ttft",
        "mini-model=0.3",
        "--per-token",
        "mini-model=0.01",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        url = line.split()[1]
        backend = build({"mini": {**binding(OpenAIServer(port=1)), "base_url": url}})
        arrivals: list[float] = []
        started = time.perf_counter()

        def note(partial: PartialReply) -> StreamVerdict | None:
            arrivals.append(time.perf_counter() - started)
            return None

        result = await chat_until(backend, TRIAGE, note)
        assert arrivals[0] >= 0.3
        assert arrivals[-2] - arrivals[0] >= 0.01 * (len(result.logprobs or ()) - 2)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


def test_server_timing_flags() -> None:
    assert _timing(["mini=0.3", "0.5"], ["mini=0.02"]) == {"mini": (0.3, 0.02), None: (0.5, 0.0)}
    with pytest.raises(SystemExit, match="MODEL="):
        _timing(["mini=fast"], [])


async def test_timing_paces_plain_replies_too(server: OpenAIServer, build: Build) -> None:
    server.timing = {"mini-model": (0.1, 0.01), None: (0.0, 0.0)}
    backend = build({"mini": binding(server)})
    started = time.perf_counter()
    result = await backend.chat(HELLO)
    assert time.perf_counter() - started >= 0.1 + 0.01 * (len(tokenize(result.text)) - 1)
    assert server.pace("other") == (0.0, 0.0) and server.pace("mini-model") == (0.1, 0.01)
