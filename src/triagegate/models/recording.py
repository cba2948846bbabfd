"""Recording model traffic: a wrapper backend that appends every call to a JSONL file.

Each line is one ``chat`` or ``classify`` call::

    {"format": "triagegate-recording/1", "key": "<sha256>", "alias": "mini", "op": "chat",
     "node": "triage", "capabilities": {...}, "request": {...}, "response": {...} | "error": {...},
     "recorded_at": "..."}

``key`` is the sha256 of the canonical request (:func:`canonical_request`: the operation,
the model alias, the messages, the JSON schema and the sampling parameters), which is what
:class:`~triagegate.models.replay.ReplayBackend` looks responses up by, so a replay needs
nothing but the same requests. ``capabilities`` are the recorded backend's, because they
shape the requests nodes build (log-probabilities, chat or classify) and a replay must
present the same ones. Inline ``data:`` images are stored (and keyed) by digest, not bytes.

What never reaches the file: headers and keys (requests are recorded as the backend
protocol sees them, before any HTTP), and any string equal to a registered secret
(:func:`triagegate.log.register_secret`), to an API key of the graph's bindings, or shaped
like a bearer token or ``sk-`` key, wherever it appears (a model that echoes a key).

Lines are appended (one ``write`` per line, flushed), so several processes may record to
one file and a crash loses at most the line being written.

A reply the caller stopped early (:func:`~triagegate.models.base.chat_until`) is recorded
as it was received, with ``"stopped_early": true`` in its response: what was never sent
cannot be recorded. A replay serves it to a ``decide`` that stops at or before where the
recorded one did; a whole reply recorded for the same request (a plain ``chat``, or a
stream nobody stopped) serves any ``decide`` and wins over a stopped one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from triagegate import environment
from triagegate.errors import ModelError
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    Decide,
    MalformedLogprobs,
    ModelBackend,
    RawAlternatives,
    TokenLogprob,
    chat_until,
)

FORMAT = "triagegate-recording/1"
PREVIEW_CHARS = 60

R = TypeVar("R")


def _image_ref(url: str) -> str:
    if url.startswith("data:"):
        return f"data-sha256:{hashlib.sha256(url.encode()).hexdigest()}"
    return url


def canonical_request(alias: str, request: ChatRequest | ClassifyRequest) -> dict[str, Any]:
    """The request as recorded and keyed: only what decides the model's answer."""
    if isinstance(request, ClassifyRequest):
        return {
            "op": "classify",
            "alias": alias,
            "text": request.text,
            "labels": list(request.labels),
            "instructions": request.instructions,
        }
    schema = request.json_schema
    return {
        "op": "chat",
        "alias": alias,
        "messages": [
            {"role": m.role, "text": m.text, "images": [_image_ref(i.url) for i in m.images]}
            for m in request.messages
        ],
        "schema": None if schema is None else {"name": schema.name, "schema": schema.schema},
        "params": {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_logprobs": request.top_logprobs,
        },
    }


def request_key(canonical: Mapping[str, Any]) -> str:
    """sha256 of the canonical request's JSON (sorted keys, no whitespace)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def node_of(request: ChatRequest | ClassifyRequest) -> str:
    """Which node most likely made ``request``, from its shape (for messages; never for keys)."""
    if isinstance(request, ClassifyRequest):
        return "triage"
    schema = request.json_schema.name if request.json_schema else None
    return {"triage": "triage", "escalation": "escalate"}.get(
        schema or "", "answer" if schema is None else schema
    )


def ticket_preview(canonical: Mapping[str, Any], limit: int = PREVIEW_CHARS) -> str:
    """The start of the ticket text in a canonical request (the last user message, unwrapped)."""
    if canonical.get("op") == "classify":
        text = str(canonical.get("text", ""))
    else:
        users = [m["text"] for m in canonical.get("messages", []) if m.get("role") == "user"]
        text = users[-1] if users else ""
        start, end = text.find("<ticket>"), text.find("</ticket>")
        if start != -1:
            text = text[start + len("<ticket>") : end if end > start else None]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Scrubber:
    """Replaces secrets in every string (keys included) of a JSON-like value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        from triagegate.log import redact_secrets

        for secret in self.secrets:
            value = value.replace(secret, "[REDACTED]")
        scrubbed: str = redact_secrets(None, "", {"value": value})["value"]
        return scrubbed

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def _usage(usage: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = usage.model_dump()
    return dumped


def chat_response(result: ChatResult) -> dict[str, Any]:
    response: dict[str, Any] = {
        "text": result.text,
        "model": result.model,
        "endpoint": result.endpoint,
        "usage": _usage(result.usage),
        "latency_ms": result.latency_ms,
        "finish_reason": result.finish_reason,
        "logprobs": None
        if result.logprobs is None
        else [{"token": t.token, "logprob": t.logprob, "top": _alternatives(t)} for t in result.logprobs],
    }
    if result.warnings:
        response["warnings"] = list(result.warnings)
    if result.stopped_early:
        response["stopped_early"] = True
    return response


def _alternatives(token: TokenLogprob) -> Any:
    """A token's alternatives for the file: a ``{token: logprob}`` object, or, when the
    provider sent them malformed, exactly what it sent (replay then fails to read them the
    same way the live run did)."""
    try:
        return dict(token.top)
    except MalformedLogprobs:
        return token.top.raw if isinstance(token.top, RawAlternatives) else None


def classify_response(result: Classification) -> dict[str, Any]:
    return {
        "probabilities": result.probabilities,
        "model": result.model,
        "endpoint": result.endpoint,
        "usage": _usage(result.usage),
        "latency_ms": result.latency_ms,
    }


class Recorder:
    """Appends recorded calls to one JSONL file; shared by every wrapped alias of a pipeline."""

    def __init__(self, path: str | Path, *, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.scrub = Scrubber(secrets)
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None
        self.lines = 0

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(self.scrub(entry), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class RecordingBackend:
    """Wraps any backend, passing calls through and recording each one (errors included)."""

    def __init__(self, alias: str, inner: ModelBackend, recorder: Recorder) -> None:
        self.alias = alias
        self.inner = inner
        self.recorder = recorder
        self.name = inner.name
        self.model = inner.model
        self.capabilities = inner.capabilities

    def _entry(self, request: ChatRequest | ClassifyRequest) -> dict[str, Any]:
        canonical = canonical_request(self.alias, request)
        return {
            "format": FORMAT,
            "key": request_key(canonical),
            "alias": self.alias,
            "op": canonical["op"],
            "node": node_of(request),
            "capabilities": dataclasses.asdict(self.capabilities),
            "request": canonical,
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }

    def _failed(self, entry: dict[str, Any], exc: ModelError) -> None:
        entry["error"] = {"type": type(exc).__name__, "message": str(exc), "status": exc.status}
        self.recorder.write(entry)

    async def chat(self, request: ChatRequest) -> ChatResult:
        return await self._recorded(request, lambda: self.inner.chat(request), chat_response)

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult:
        return await self._recorded(request, lambda: chat_until(self.inner, request, decide), chat_response)

    async def classify(self, request: ClassifyRequest) -> Classification:
        return await self._recorded(request, lambda: self.inner.classify(request), classify_response)

    async def _recorded(
        self,
        request: ChatRequest | ClassifyRequest,
        call: Callable[[], Awaitable[R]],
        describe: Callable[[R], dict[str, Any]],
    ) -> R:
        """Await ``call`` and append one line for it: the response, or the error it raised."""
        entry = self._entry(request)
        try:
            result = await call()
        except ModelError as exc:
            self._failed(entry, exc)
            raise
        entry["response"] = describe(result)
        self.recorder.write(entry)
        return result

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.recorder.close()

    def __repr__(self) -> str:
        return (
            f"RecordingBackend(alias={self.alias!r}, inner={self.inner!r}, path={str(self.recorder.path)!r})"
        )


def binding_secrets(bindings: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """The API keys the graph's bindings read from ``environ`` (to keep them out of recordings)."""
    out = []
    for binding in bindings.values():
        name = getattr(binding, "api_key_env", None)
        if name and environ.get(name, "").strip():
            out.append(environ[name].strip())
    return out


def record_backends(
    backends: Mapping[str, ModelBackend],
    path: str | Path,
    *,
    bindings: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, ModelBackend]:
    """Wrap every backend of ``backends`` so its calls are appended to ``path``; keys are registered secrets."""
    from triagegate.log import register_secret

    secrets = binding_secrets(bindings or {}, environ or {})
    for secret in secrets:
        register_secret(secret)
    recorder = Recorder(path, secrets=secrets)
    return {alias: RecordingBackend(alias, backend, recorder) for alias, backend in backends.items()}


def record_path(option: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The recording to append to: ``option`` (``--record``), else ``TRIAGEGATE_RECORD``, else None."""
    value = option or environ.get(environment.RECORD)
    return Path(value) if value else None


def recorded(
    alias: str,
    backend: ModelBackend,
    option: str | Path | None,
    bindings: Mapping[str, Any],
    environ: Mapping[str, str],
) -> ModelBackend:
    """``backend`` wrapped to record its calls, when ``option`` or ``TRIAGEGATE_RECORD`` names a file."""
    path = record_path(option, environ)
    if path is None:
        return backend
    return record_backends({alias: backend}, path, bindings=bindings, environ=environ)[alias]


def capabilities_from(raw: Mapping[str, Any]) -> Capabilities:
    """Capabilities from a recorded line (unknown fields ignored, missing ones default)."""
    names = {f.name for f in dataclasses.fields(Capabilities)}
    return Capabilities(**{k: bool(v) for k, v in raw.items() if k in names})
