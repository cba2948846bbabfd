"""A scriptable OpenAI-compatible chat completions server for tests and benchmarks.

It speaks just enough of ``POST /v1/chat/completions`` for triagegate's OpenAI backend:
JSON-schema structured output, ``logprobs``/``top_logprobs``, usage counts, error
statuses with ``Retry-After``, hangs and garbage bodies. It is a raw ASGI app served by
uvicorn on 127.0.0.1 in a background thread (or as its own process, see ``main``).

Each request is answered by the next scripted behaviour queued for its ``model`` (or for
any model), else by an *auto reply*: a JSON object that conforms to the request's schema,
with log-probabilities that make one-character enum values (option codes) carry
``code_confidence`` of the mass. Global knobs add latency and random faults for batch
tests. The hot path avoids anything heavier than one ``json.loads``/``json.dumps`` so a
single process serves well over a thousand requests per second.

Standalone::

    python tests/support/openai_server.py --port 0 --latency 0.2 --fault-rate 0.1

prints ``READY http://127.0.0.1:PORT/v1`` and serves until SIGTERM or SIGINT. A server in its
own process is steered and read over HTTP: ``POST /control/faults`` with
``{"fault_rate": 1.0, "faults": ["500"]}`` makes it start (or, with ``0``, stop) failing, and
``GET /control/stats`` returns its request count, statuses sent and arrival times.

Streaming: a request with ``"stream": true`` is answered with server-sent events in
OpenAI's ``chat.completion.chunk`` format, one chunk per token of :func:`tokenize` (so the
option code of a triage reply arrives a few tokens in), each with its ``logprobs.content``
entry when log-probabilities were asked for, a last chunk with ``usage`` when
``stream_options.include_usage`` is set, then ``data: [DONE]``. ``timing`` gives a model a
time to first token and a per-token latency (``--ttft mini=0.3 --per-token mini=0.02``);
a non-streamed reply to that model is sent when its last token would have been. Every
stream is logged in ``streams`` (:class:`StreamLog`: tokens planned, tokens actually
sent, whether the client hung up first), so a test can see that a client that stopped
early cancelled the rest. :class:`Cut` breaks a stream off mid-reply; :class:`Stall`
stops sending mid-reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn

__all__ = [
    "LOGPROBS_MODES",
    "Behaviour",
    "Cut",
    "Delay",
    "Garbage",
    "Hang",
    "OpenAIServer",
    "Reply",
    "Stall",
    "Status",
    "StreamError",
    "StreamLog",
    "auto_content",
    "code_spots",
    "make_logprobs",
    "tokenize",
]

AUTO_TEXT = "auto answer"
ARRIVALS_KEPT = 100_000
"""Arrival times kept for ``GET /control/stats`` (the most recent ones)."""
CODE_TOKEN_LOGPROB = -0.01
"""Log-probability given to every token that is not an option code."""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Chooser = Callable[[str, list[Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class Reply:
    """A 200 completion. ``dict`` content is ``json.dumps``'ed.

    ``logprobs`` is the raw ``choices[0].logprobs.content`` list; when it is ``None`` and
    the request asked for log-probabilities, they are generated from the content (as the
    server's ``logprobs_mode`` says).
    ``usage`` is ``(prompt_tokens, completion_tokens)``, sent as given (absurd or malformed
    counts included); ``None`` estimates them; ``omit_usage`` sends no ``usage`` object.
    """

    content: str | dict[str, Any]
    logprobs: list[dict[str, Any]] | None = None
    usage: tuple[Any, Any] | None = None
    finish_reason: str = "stop"
    omit_usage: bool = False


@dataclass(frozen=True)
class Status:
    """An error status. ``body`` ``None`` sends an OpenAI-style error object; a str is sent raw."""

    code: int
    retry_after: float | None = None
    body: Any = None


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` (or until the client hangs up), then auto-reply."""

    seconds: float


@dataclass(frozen=True)
class Garbage:
    """A 200 whose body is not JSON."""

    text: str = "not json{"


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then behave as ``then``."""

    seconds: float
    then: Behaviour


@dataclass(frozen=True)
class Cut:
    """Send ``after_tokens`` tokens of the (auto or given) reply, then break the connection off.

    ``abrupt`` drops the connection mid-body (the client sees an incomplete chunked body);
    otherwise the body ends cleanly but without the finishing chunk and ``data: [DONE]``.
    A non-streamed request is cut before any response.
    """

    after_tokens: int = 3
    reply: Reply | None = None
    abrupt: bool = True


@dataclass(frozen=True)
class Stall:
    """Send ``after_tokens`` tokens, then send nothing for ``seconds`` (or until the client
    hangs up), then the rest. A non-streamed request waits ``seconds`` before its reply."""

    after_tokens: int = 3
    seconds: float = 30.0
    reply: Reply | None = None


@dataclass(frozen=True)
class StreamError:
    """Send ``after_tokens`` tokens, then an error event (``data: {"error": ...}``) and end the
    stream, as providers do when generation fails part way. A non-streamed request gets a 500."""

    after_tokens: int = 3
    message: str = "the server had an error while processing your request"


Behaviour = Reply | Status | Hang | Garbage | Delay | Cut | Stall | StreamError


@dataclass
class StreamLog:
    """One streamed reply as the server sent it."""

    model: str
    tokens: int
    """Tokens the whole reply has."""
    sent: int = 0
    """Tokens actually sent before the stream ended."""
    done: bool = False
    """``data: [DONE]`` was sent."""
    client_left: bool = False
    """The client closed the connection before the reply was complete."""


LOGPROBS_MODES = ("auto", "omit", "null", "malformed", "unaligned")
"""What a reply carries when log-probabilities are asked for and not scripted: ``auto``
(generated from the content), ``omit`` (no ``logprobs`` key), ``null`` (``"logprobs": null``),
``malformed`` (``top_logprobs`` entries that are not objects) or ``unaligned`` (tokens that do
not spell the content), as independent servers have been seen to do."""

_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
_OPTION_LINE = re.compile(r"^\s*([A-Za-z])\s*[:).]\s+\S", re.MULTILINE)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word runs and single punctuation marks, each with its leading blanks.

    The pieces concatenate back to ``text`` exactly, like a real tokenizer's.
    """
    return _TOKEN.findall(text)


def _first_choice(field: str, values: list[Any], body: dict[str, Any]) -> Any:
    return values[0]


class _AutoBuilder:
    """Builds a schema-conforming value and remembers where option-code values were chosen."""

    def __init__(self, root: dict[str, Any], body: dict[str, Any], choose: Chooser) -> None:
        self.root = root
        self.body = body
        self.choose = choose
        self.codes: list[tuple[str, str, list[str]]] = []
        """(field name, chosen code, all codes) in the order they appear in the output."""

    def value(self, schema: Any, field: str, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 32:
            return AUTO_TEXT
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), field, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            values = list(schema["enum"])
            chosen = self.choose(field, values, self.body)
            if all(isinstance(v, str) and len(v) == 1 for v in values):
                self.codes.append((field, chosen, values))
            return chosen
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
                return self.value(options[0] if options else {"type": "null"}, field, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            properties = schema.get("properties") or {}
            names = list(properties) + [n for n in schema.get("required", []) if n not in properties]
            return {
                name: self.value(properties.get(name, {"type": "string"}), name, depth + 1) for name in names
            }
        if kind == "array":
            count = int(schema.get("minItems", 0))
            return [self.value(schema.get("items", {}), field, depth + 1) for _ in range(count)]
        return {"number": 0.9, "integer": 1, "boolean": False, "null": None}.get(kind or "string", AUTO_TEXT)

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node


def auto_content(
    body: dict[str, Any], choose: Chooser = _first_choice
) -> tuple[str, list[tuple[int, list[str]]]]:
    """The auto reply's content for ``body`` and the (offset, codes) of each option-code value in it."""
    content, fields, bare = _plan(body, choose)
    return content, code_spots(content, fields, bare)


def _plan(body: dict[str, Any], choose: Chooser) -> tuple[str, list[tuple[str, list[str]]], list[str] | None]:
    """Auto content, the option-code fields of the requested schema, and the codes of a bare answer."""
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        builder = _AutoBuilder(schema, body, choose)
        content = json.dumps(builder.value(schema, ""))
        return content, [(field, codes) for field, _, codes in builder.codes], None
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": AUTO_TEXT}), [], None
    if body.get("logprobs") and body.get("max_tokens") == 1:
        codes = _prompt_codes(body)
        if codes:
            return str(choose("label", codes, body)), [], codes
        return "auto", [], None
    return AUTO_TEXT, [], None


def code_spots(
    content: str, fields: Sequence[tuple[str, list[str]]], bare: list[str] | None = None
) -> list[tuple[int, list[str]]]:
    """Offsets in ``content`` where an option code is the value of one of ``fields`` (in order)."""
    if bare is not None:
        stripped = content.lstrip()
        return [(len(content) - len(stripped), bare)] if stripped in bare else []
    spots: list[tuple[int, list[str]]] = []
    cursor = 0
    for field, codes in fields:
        match = re.compile(re.escape(json.dumps(field)) + r'\s*:\s*"(.)"').search(content, cursor)
        if match is not None and match.group(1) in codes:
            spots.append((match.start(1), [str(c) for c in codes]))
            cursor = match.end()
    return spots


def _prompt_codes(body: dict[str, Any]) -> list[str]:
    """Option codes listed one per line (``A: billing``) in the system message."""
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "system":
            return list(dict.fromkeys(_OPTION_LINE.findall(_message_text(message))))
    return []


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _entry(token: str, logprob: float, top: Sequence[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
    }


def make_logprobs(
    content: str, spots: Sequence[tuple[int, list[str]]], confidence: float, top_n: int
) -> list[dict[str, Any]]:
    """Token log-probabilities for ``content``; a code at a spot gets ``confidence``, the rest shared."""
    by_offset = dict(spots)
    out: list[dict[str, Any]] = []
    offset = 0
    top_n = max(1, top_n)
    for token in tokenize(content):
        codes = by_offset.get(offset)
        if codes is not None and token in codes:
            out.append(_code_entry(token, codes, confidence, top_n))
        else:
            out.append(_entry(token, CODE_TOKEN_LOGPROB, [(token, CODE_TOKEN_LOGPROB)]))
        offset += len(token)
    return out


def _code_entry(chosen: str, codes: list[str], confidence: float, top_n: int) -> dict[str, Any]:
    confidence = min(max(confidence, 1e-6), 1.0)
    others = [c for c in codes if c != chosen]
    top = [(chosen, math.log(confidence))]
    if others and confidence < 1.0:
        share = math.log((1.0 - confidence) / len(others))
        top.extend((c, share) for c in others[: top_n - 1])
    return _entry(chosen, top[0][1], top)


class _App:
    """The raw ASGI app; all state lives on the owning :class:`OpenAIServer`."""

    def __init__(self, server: OpenAIServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] == "POST" and path.endswith("/chat/completions"):
            await self.server._handle(scope, receive, send)
        elif scope["method"] == "GET" and path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": [{"id": "auto", "object": "model"}]})
        elif scope["method"] == "GET" and path in ("/health", "/v1/health"):
            await _send_json(send, 200, {"status": "ok"})
        elif scope["method"] == "GET" and path == "/control/stats":
            await _send_json(send, 200, self.server.stats())
        elif scope["method"] == "POST" and path == "/control/faults":
            raw = await _read_body(receive)
            try:
                await _send_json(send, 200, self.server.set_faults(json.loads(raw or b"{}")))
            except (ValueError, TypeError) as exc:
                await _send_json(send, 400, _error(str(exc), "invalid_request_error"))
        else:
            await _send_json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})


async def _send_raw(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await _send_raw(send, status, json.dumps(payload).encode(), headers)


class OpenAIServer:
    """A loopback OpenAI-compatible server with scripted behaviours and global fault knobs.

    Knobs (plain attributes, settable while running): ``latency`` seconds added to every
    request; ``fault_rate`` probability that an unscripted request fails with one of
    ``faults`` (``"429"``/``"500"``/any status code, ``"timeout"`` = hang ``hang_seconds``,
    ``"garbage"``), drawn from an RNG seeded with ``seed``; ``fault_retry_after`` sent with
    injected 429/503; ``code_confidence`` (a float or ``f(body) -> float``) for option-code
    tokens; ``choose(field, enum_values, body) -> value`` picks enum values; ``logprobs_mode``
    (one of :data:`LOGPROBS_MODES`); ``record`` (keep request bodies and headers; turn off
    for long benchmarks); ``timing`` ``{model: (ttft_s, per_token_s)}`` (key ``None``: any
    other model) paces the tokens of a reply, streamed or not; ``stream_replies`` (``False``:
    answer ``stream: true`` with one completion, as servers without streaming do).

    Counters: ``count`` requests received, ``model_counts`` per requested model, ``peers``
    the client address of each recorded request (one per connection used),
    ``status_counts`` per status sent, ``max_concurrency_seen`` most chat requests in flight
    at once, ``streams`` one :class:`StreamLog` per streamed reply once it has ended,
    ``arrivals`` the ``time.time()`` of each chat request (the last :data:`ARRIVALS_KEPT`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        faults: Sequence[str] = ("429", "500", "timeout"),
        hang_seconds: float = 30.0,
        fault_retry_after: float | None = None,
        seed: int = 0,
        code_confidence: float | Callable[[dict[str, Any]], float] = 0.9,
        choose: Chooser | None = None,
        record: bool = True,
        logprobs_mode: str = "auto",
        timing: dict[str | None, tuple[float, float]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.fault_rate = fault_rate
        bad = [f for f in faults if f not in ("timeout", "garbage") and not (f.isdigit() and len(f) == 3)]
        if bad:
            raise ValueError(f"unknown faults {bad}: use HTTP status codes, 'timeout' or 'garbage'")
        self.faults = tuple(faults)
        self.hang_seconds = hang_seconds
        self.fault_retry_after = fault_retry_after
        self.seed = seed
        self.code_confidence = code_confidence
        self.choose: Chooser = choose or _first_choice
        self.record = record
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"unknown logprobs_mode {logprobs_mode!r}: use one of {', '.join(LOGPROBS_MODES)}"
            )
        self.logprobs_mode = logprobs_mode
        self.timing: dict[str | None, tuple[float, float]] = dict(timing or {})
        self.stream_replies = True
        self.peers: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.count = 0
        self.model_counts: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.streams: list[StreamLog] = []
        self.max_concurrency_seen = 0
        self.in_flight = 0
        self.arrivals: deque[float] = deque(maxlen=ARRIVALS_KEPT)
        self._rng = random.Random(seed)
        self._scripts: dict[str | None, deque[Behaviour]] = {}
        self._lock = threading.Lock()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``; known once started (and still after ``stop``)."""
        if self.port == 0:
            raise RuntimeError("the server has not been started, so it has no port yet")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> OpenAIServer:
        """Bind (a free port when ``port`` is 0) and serve in a daemon thread; returns self."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            _App(self),
            log_config=None,  # leave the process's logging as the test set it up
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="auto",
            backlog=2048,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="openai-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving (in-flight hangs are cut after a second) and join the thread."""
        if self._uvicorn is None or self._thread is None:
            return
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self._uvicorn = None
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """What ``GET /control/stats`` answers: ``count``, ``status_counts`` and ``arrivals`` (the
        ``time.time()`` each chat request arrived at, the last :data:`ARRIVALS_KEPT` of them)."""
        return {
            "count": self.count,
            "status_counts": {str(k): v for k, v in self.status_counts.items()},
            "arrivals": list(self.arrivals),
        }

    def set_faults(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """Set ``fault_rate``, ``faults`` and ``latency`` while running (``POST /control/faults``,
        for a server in its own process); returns their values. Raises ``ValueError`` for a bad knob."""
        unknown = set(knobs) - {"fault_rate", "faults", "latency"}
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}: use fault_rate, faults, latency")
        if "faults" in knobs:
            faults = [str(f) for f in knobs["faults"]]
            bad = [f for f in faults if f not in ("timeout", "garbage") and not (f.isdigit() and len(f) == 3)]
            if bad:
                raise ValueError(f"unknown faults {bad}: use HTTP status codes, 'timeout' or 'garbage'")
            self.faults = tuple(faults)
        if "fault_rate" in knobs:
            self.fault_rate = float(knobs["fault_rate"])
        if "latency" in knobs:
            self.latency = float(knobs["latency"])
        return {"fault_rate": self.fault_rate, "faults": list(self.faults), "latency": self.latency}

    def script(self, model: str | None, *behaviours: Behaviour) -> None:
        """Queue ``behaviours`` for requests whose ``model`` is ``model`` (``None``: any model)."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(behaviours)

    def reset(self) -> None:
        """Forget recorded requests, counters and queued scripts, and reseed the fault RNG."""
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self.request_headers.clear()
            self.peers.clear()
            self.count = 0
            self.model_counts.clear()
            self.status_counts.clear()
            self.streams.clear()
            self.arrivals.clear()
            self.max_concurrency_seen = 0
            self._rng = random.Random(self.seed)

    def wait_for_streams(self, count: int, timeout: float = 5.0) -> list[StreamLog]:
        """Block until ``count`` streams have ended (the server sees a hang-up a moment after the
        client); returns :attr:`streams`. Raises ``TimeoutError`` if they have not by ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.streams) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.streams)} of {count} streams ended within {timeout:g} s")
            time.sleep(0.005)
        return self.streams

    def pace(self, model: Any) -> tuple[float, float]:
        """``(ttft_s, per_token_s)`` for ``model`` from :attr:`timing` (``(0, 0)`` when unset)."""
        timing = self.timing
        if not timing:
            return (0.0, 0.0)
        return timing.get(model if isinstance(model, str) else None) or timing.get(None) or (0.0, 0.0)

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet consumed."""
        with self._lock:
            return sum(len(q) for q in self._scripts.values())

    def _next_behaviour(self, model: Any) -> Behaviour | None:
        with self._lock:
            for key in (model, None):
                queue = self._scripts.get(key) if isinstance(key, str | None) else None
                if queue:
                    return queue.popleft()
        if self.fault_rate > 0 and self.faults and self._rng.random() < self.fault_rate:
            return self._fault(self._rng.choice(self.faults))
        return None

    def _fault(self, name: str) -> Behaviour:
        if name == "timeout":
            return Hang(self.hang_seconds)
        if name == "garbage":
            return Garbage()
        code = int(name)
        return Status(code, retry_after=self.fault_retry_after if code in (429, 503) else None)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.count += 1
        self.arrivals.append(time.time())
        self.in_flight += 1
        self.max_concurrency_seen = max(self.max_concurrency_seen, self.in_flight)
        try:
            raw = await _read_body(receive)
            if raw is None:
                self.status_counts[499] += 1
                return
            try:
                body = json.loads(raw)
            except ValueError:
                await self._send(send, 400, _error("request body is not JSON", "invalid_request_error"))
                return
            if not isinstance(body, dict):
                await self._send(send, 400, _error("request body must be an object", "invalid_request_error"))
                return
            model = body.get("model")
            self.model_counts[model if isinstance(model, str) else ""] += 1
            if self.record:
                self.requests.append(body)
                self.request_headers.append(
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                )
                self.peers.append(tuple(scope.get("client") or ()))
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            behaviour = self._next_behaviour(model)
            if body.get("stream") and self.stream_replies:
                await self._behave_streaming(behaviour, body, receive, send)
            else:
                await self._behave(behaviour, body, receive, send)
        finally:
            self.in_flight -= 1

    async def _behave(
        self, behaviour: Behaviour | None, body: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        while isinstance(behaviour, Delay):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then
        if isinstance(behaviour, Hang | Stall):
            if await _client_left_within(receive, behaviour.seconds):
                self.status_counts[499] += 1
                return
            behaviour = behaviour.reply if isinstance(behaviour, Stall) else None
        if isinstance(behaviour, StreamError):
            behaviour = Status(500, body=_error(behaviour.message, "server_error"))
        if isinstance(behaviour, Cut):
            raw = json.dumps(self._completion(body, behaviour.reply)).encode()
            self.status_counts[200] += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": raw[: len(raw) // 2], "more_body": True})
            raise _StreamCut("scripted cut mid-body")
        if behaviour is None or isinstance(behaviour, Reply):
            completion = self._completion(body, behaviour)
            ttft, per_token = self.pace(body.get("model"))
            if ttft or per_token:
                tokens = len(tokenize(completion["choices"][0]["message"]["content"]))
                if await _client_left_within(receive, ttft + per_token * max(0, tokens - 1)):
                    self.status_counts[499] += 1
                    return
            await self._send(send, 200, completion)
        elif isinstance(behaviour, Garbage):
            self.status_counts[200] += 1
            await _send_raw(send, 200, behaviour.text.encode())
        else:
            headers = (
                []
                if behaviour.retry_after is None
                else [(b"retry-after", f"{behaviour.retry_after:g}".encode())]
            )
            if isinstance(behaviour.body, str | bytes):
                self.status_counts[behaviour.code] += 1
                raw = behaviour.body.encode() if isinstance(behaviour.body, str) else behaviour.body
                await _send_raw(send, behaviour.code, raw, headers)
                return
            payload = behaviour.body if behaviour.body is not None else _status_error(behaviour.code)
            await self._send(send, behaviour.code, payload, headers)

    async def _behave_streaming(
        self, behaviour: Behaviour | None, body: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        """Answer a ``stream: true`` request: errors and garbage as for any request, a reply as events."""
        while isinstance(behaviour, Delay):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then
        if isinstance(behaviour, Hang):
            if await _client_left_within(receive, behaviour.seconds):
                self.status_counts[499] += 1
                return
            behaviour = None
        if isinstance(behaviour, Status | Garbage):
            await self._behave(behaviour, body, receive, send)
            return
        if isinstance(behaviour, StreamError):
            reply, fault = None, behaviour
        else:
            reply = behaviour if isinstance(behaviour, Reply) or behaviour is None else behaviour.reply
            fault = behaviour if isinstance(behaviour, Cut | Stall) else None
        await self._stream(body, reply, fault, receive, send)

    async def _stream(
        self,
        body: dict[str, Any],
        reply: Reply | None,
        fault: Cut | Stall | StreamError | None,
        receive: Receive,
        send: Send,
    ) -> None:
        completion = self._completion(body, reply)
        choice = completion["choices"][0]
        content: str = choice["message"]["content"]
        raw_logprobs = choice.get("logprobs")
        has_logprobs = "logprobs" in choice
        entries = raw_logprobs.get("content") if isinstance(raw_logprobs, dict) else None
        pieces = _stream_pieces(content, entries)
        model = str(body.get("model") or "auto")
        log = StreamLog(model=model, tokens=len(pieces))
        ttft, per_token = self.pace(body.get("model"))
        left = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()

        watcher = asyncio.create_task(watch())

        async def wait(seconds: float) -> bool:
            """Sleep ``seconds``; True when the client hung up meanwhile."""
            if seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(left.wait(), timeout=seconds)
            else:
                await asyncio.sleep(0)  # let the watcher see a hang-up
            return left.is_set()

        base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"]}
        base["model"] = completion["model"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], piece_entries: Any, finish: str | None) -> bytes:
            choice_out: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if has_logprobs:
                choice_out["logprobs"] = None if piece_entries is None else {"content": piece_entries}
            payload: dict[str, Any] = {**base, "choices": [choice_out]}
            if include_usage:
                payload["usage"] = None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        loop = asyncio.get_running_loop()
        begun = loop.time()
        try:
            self.status_counts[200] += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            for index, (text, piece_entries) in enumerate(pieces):
                if fault is not None and index == fault.after_tokens:
                    if isinstance(fault, StreamError):
                        error = json.dumps(_error(fault.message, "server_error")).encode()
                        event = b"data: " + error + b"\n\n"
                        await send({"type": "http.response.body", "body": event, "more_body": False})
                        return
                    if isinstance(fault, Cut):
                        if fault.abrupt:
                            raise _StreamCut(f"scripted cut after {index} tokens")
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    if await wait(fault.seconds):
                        break
                    begun += fault.seconds
                due = begun + ttft + per_token * index  # on a clock, so waits' overshoot does not add up
                if await wait(due - loop.time()):
                    break
                delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
                await send(
                    {
                        "type": "http.response.body",
                        "body": chunk(delta, piece_entries, None),
                        "more_body": True,
                    }
                )
                log.sent += 1
            else:
                if not pieces:
                    body_out = chunk({"role": "assistant", "content": ""}, None, None)
                    await send({"type": "http.response.body", "body": body_out, "more_body": True})
                tail = chunk({}, None, choice["finish_reason"])
                if include_usage and "usage" in completion:
                    tail += (
                        b"data: " + json.dumps({**base, "choices": [], "usage": completion["usage"]}).encode()
                    )
                    tail += b"\n\n"
                tail += b"data: [DONE]\n\n"
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                log.done = True
                return
            log.client_left = True
            self.status_counts[499] += 1
        finally:
            watcher.cancel()
            self.streams.append(log)

    async def _send(
        self, send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status_counts[status] += 1
        await _send_json(send, status, payload, headers)

    def _completion(self, body: dict[str, Any], reply: Reply | None) -> dict[str, Any]:
        logprobs: list[dict[str, Any]] | None = None
        wants_logprobs = bool(body.get("logprobs"))
        if reply is None:
            content, spots = auto_content(body, self.choose)
            finish = "stop"
        else:
            content = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
            spots = []
            if wants_logprobs and reply.logprobs is None:
                _, fields, bare = _plan(body, self.choose)
                spots = code_spots(content, fields, bare)
            logprobs = reply.logprobs
            finish = reply.finish_reason
        mode = self.logprobs_mode if wants_logprobs and logprobs is None else "auto"
        if wants_logprobs and logprobs is None:
            confidence = self.code_confidence
            value = confidence(body) if callable(confidence) else confidence
            logprobs = make_logprobs(content, spots, value, int(body.get("top_logprobs") or 1))
            if mode == "malformed":
                logprobs = [{**entry, "top_logprobs": ["not", "objects"]} for entry in logprobs]
            elif mode == "unaligned":
                logprobs = [_entry(" x", CODE_TOKEN_LOGPROB, [(" x", CODE_TOKEN_LOGPROB)]) for _ in logprobs]
        if reply is not None and reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            chars = sum(len(_message_text(m)) for m in body.get("messages") or () if isinstance(m, dict))
            prompt_tokens, completion_tokens = chars // 4, len(content) // 4 + 1
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": {"content": logprobs} if logprobs is not None and mode != "null" else None,
            "finish_reason": finish,
        }
        if mode == "omit":
            del choice["logprobs"]
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{self.count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "auto",
            "choices": [choice],
        }
        if reply is None or not reply.omit_usage:
            total = (
                prompt_tokens + completion_tokens
                if all(isinstance(n, int) for n in (prompt_tokens, completion_tokens))
                else None
            )
            completion["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
            }
        return completion


class _StreamCut(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response (a scripted cut)."""


class _QuietCuts(logging.Filter):
    """Keep uvicorn from logging a scripted :class:`_StreamCut` as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _StreamCut)


logging.getLogger("uvicorn.error").addFilter(_QuietCuts())


def _stream_pieces(content: str, entries: Any) -> list[tuple[str, Any]]:
    """The reply as ``(text, logprobs entries)`` per chunk: one token each.

    Tokens come from the log-probabilities when they spell the content, else from
    :func:`tokenize`; entries that do not pair one-to-one with tokens all ride on the first
    chunk, so the streamed entries always add up to the non-streamed list.
    """
    if isinstance(entries, list) and entries:
        texts = [str(e.get("token")) if isinstance(e, dict) else "\0" for e in entries]
        if "".join(texts) == content:
            return [(t, [e]) for t, e in zip(texts, entries, strict=True)]
        tokens = tokenize(content)
        if len(tokens) == len(entries):
            return [(t, [e]) for t, e in zip(tokens, entries, strict=True)]
        pieces: list[tuple[str, Any]] = [(t, []) for t in tokens] or [("", [])]
        pieces[0] = (pieces[0][0], list(entries))
        return pieces
    return [(t, None if entries is None else []) for t in tokenize(content)]


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or ``None`` when the client hung up before sending all of it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _client_left_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client disconnects instead."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _status_error(code: int) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }
    return _error(f"scripted status {code}", kinds.get(code, "server_error"))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a scriptable OpenAI-compatible API on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability of an injected fault")
    parser.add_argument(
        "--faults", default="429,500,timeout", help="comma-separated: status codes, timeout, garbage"
    )
    parser.add_argument("--hang-seconds", type=float, default=30.0, help="how long a 'timeout' fault hangs")
    parser.add_argument(
        "--retry-after", type=float, default=None, help="Retry-After sent with injected 429/503"
    )
    parser.add_argument("--code-confidence", type=float, default=0.9)
    parser.add_argument(
        "--logprobs",
        choices=LOGPROBS_MODES,
        default="auto",
        help="what replies carry when log-probabilities are asked for (to try the fallback)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ttft",
        action="append",
        default=[],
        metavar="[MODEL=]SECONDS",
        help="time to first token, for one model or (without MODEL=) any other; repeatable",
    )
    parser.add_argument(
        "--per-token",
        action="append",
        default=[],
        metavar="[MODEL=]SECONDS",
        help="seconds between tokens after the first, for one model or any other; repeatable",
    )
    return parser.parse_args(argv)


def _timing(ttft: Sequence[str], per_token: Sequence[str]) -> dict[str | None, tuple[float, float]]:
    """``--ttft``/``--per-token`` values as :attr:`OpenAIServer.timing`."""
    table: dict[str | None, list[float]] = {}
    for position, values in ((0, ttft), (1, per_token)):
        for value in values:
            model, _, seconds = value.rpartition("=")
            try:
                number = float(seconds)
            except ValueError:
                raise SystemExit(f"not [MODEL=]SECONDS: {value!r}") from None
            table.setdefault(model or None, [0.0, 0.0])[position] = number
    return {model: (pair[0], pair[1]) for model, pair in table.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run standalone: print ``READY <base_url>`` once serving, stop on SIGTERM/SIGINT."""
    args = _parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = OpenAIServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        fault_rate=args.fault_rate,
        faults=[f.strip() for f in args.faults.split(",") if f.strip()],
        hang_seconds=args.hang_seconds,
        fault_retry_after=args.retry_after,
        seed=args.seed,
        code_confidence=args.code_confidence,
        record=False,
        logprobs_mode=args.logprobs,
        timing=_timing(args.ttft, args.per_token),
    )
    with server:
        print(f"READY {server.base_url}", flush=True)
        stop.wait()
    with contextlib.suppress(Exception):
        print(f"served {server.count} requests: {dict(server.status_counts)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
