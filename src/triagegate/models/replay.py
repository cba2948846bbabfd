"""Serving recorded model traffic: offline, deterministic, keyed by what was asked.

Bind an alias to a recording made with ``--record`` (see :mod:`triagegate.models.recording`)::

    mini:
      backend: replay
      options:
        recording: recordings/support.jsonl   # relative to the graph file
        alias: mini                           # optional: whose recorded calls to serve (default: this alias)

or replay a whole graph without editing it: ``--replay PATH`` on ``run``, ``eval``, ``batch``
and ``calibrate`` (or ``TRIAGEGATE_REPLAY=PATH``) rebinds every alias with
:func:`with_replay`.

A request is answered by the recorded line whose key (sha256 of the canonical request) is
the same: the latest successful response for that key, or when the key only ever failed,
the latest failure, raised again as the same error class. So a replay depends only on the
requests, never on their order or concurrency. A request that was never recorded raises
:class:`~triagegate.errors.ReplayMiss` naming the node, the alias, the start of the ticket
and the key, and saying how to record it. The backend presents the recorded backend's
capabilities, since they decide which requests nodes build. Results carry the recorded
model, endpoint and usage, so a replayed Outcome matches the recorded one.

``chat_until`` offers the recorded reply to ``decide`` one token at a time, as a live
stream would arrive, so a replay stops where the live run did. A whole recorded reply
serves any ``decide``; where it stops, the result is cut there with the usage of what
was shown (recorded prompt tokens, one output token per token shown, at the binding's
price). A reply recorded stopped early serves a ``decide`` that stops within it (the
recorded result itself when it stops at the same token); one that would read further,
and plain ``chat``, raise :class:`~triagegate.errors.ReplayMiss`, since the rest was never
received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from triagegate import environment, errors
from triagegate.errors import ConfigError, ReplayMiss
from triagegate.models import BuildContext
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    Decide,
    RawAlternatives,
    TokenLogprob,
    held_reply_until,
)
from triagegate.models.recording import (
    FORMAT,
    canonical_request,
    capabilities_from,
    node_of,
    request_key,
    ticket_preview,
)
from triagegate.spec import LoadedSpec, ModelBinding, Price
from triagegate.types import Usage

OPTIONS = ("recording", "alias")
_ERRORS: dict[str, type[errors.ModelError]] = {
    cls.__name__: cls
    for cls in (
        errors.ModelError,
        errors.ModelTimeout,
        errors.RateLimited,
        errors.ModelUnavailable,
        errors.BadModelOutput,
        errors.UnsupportedOperation,
        errors.ReplayMiss,
    )
}


@dataclass
class Recording:
    """A recording file indexed by request key."""

    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    capabilities: dict[str, Capabilities] = field(default_factory=dict)
    """The capabilities last recorded per alias."""
    models: dict[str, str] = field(default_factory=dict)
    lines: int = 0

    def add(self, entry: dict[str, Any]) -> None:
        """Index ``entry``: the latest whole response for its key wins over a reply stopped
        early, and either over a failure."""
        key = entry["key"]
        previous = self.entries.get(key)
        if previous is None or _rank(entry) >= _rank(previous):
            self.entries[key] = entry
        alias = str(entry.get("alias", ""))
        if isinstance(entry.get("capabilities"), dict):
            self.capabilities[alias] = capabilities_from(entry["capabilities"])
        model = (entry.get("response") or {}).get("model")
        if isinstance(model, str) and model:
            self.models[alias] = model
        self.lines += 1


def _rank(entry: dict[str, Any]) -> int:
    response = entry.get("response")
    if not isinstance(response, dict):
        return 0
    return 1 if response.get("stopped_early") else 2


def _parse(path: Path, text: str) -> Recording:
    recording = Recording(path=path)
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # a last line cut short by a crash while recording
            raise ConfigError(f"not a recording line: {exc.msg}", file=str(path), line=number) from None
        if (
            not isinstance(entry, dict)
            or entry.get("format") != FORMAT
            or not isinstance(entry.get("key"), str)
        ):
            raise ConfigError(
                f"not a triagegate recording line (expected format {FORMAT!r})", file=str(path), line=number
            )
        recording.add(entry)
    return recording


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> Recording:
    return _parse(Path(path), Path(path).read_text(encoding="utf-8"))


def read_recording(path: str | Path) -> Recording:
    """Read and index a recording (cached while the file is unchanged). Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        stat = path.stat()
        if not path.is_file():
            raise ConfigError("the recording is not a file", file=str(path))
        return _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        raise ConfigError(
            "recording not found; make one with --record PATH on run, eval, batch or calibrate",
            file=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the recording: {exc}", file=str(path)) from None


class ReplayBackend:
    """Answers chat and classify calls from a :class:`Recording`; never touches the network."""

    def __init__(
        self,
        alias: str,
        recording: Recording,
        *,
        source_alias: str | None = None,
        model: str = "",
        capabilities: Capabilities | None = None,
        price: Price | None = None,
    ) -> None:
        self.alias = alias
        self.recording = recording
        self.source_alias = source_alias or alias
        self.name = f"{alias}@replay"
        self.model = model or recording.models.get(self.source_alias, "replay")
        self.price = price or Price()
        """What a reply cut by ``decide`` costs (a whole one costs what was recorded)."""
        self.capabilities = (
            capabilities
            or recording.capabilities.get(self.source_alias)
            or Capabilities(chat=True, classify=True)
        )

    @classmethod
    def from_binding(cls, alias: str, binding: ModelBinding, context: BuildContext) -> ReplayBackend:
        options = binding.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for the replay backend: {', '.join(unknown)}; known: {', '.join(OPTIONS)}",
                key=f"models.{alias}.options",
            )
        value = options.get("recording")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                "the replay backend needs options.recording: a JSONL file written with --record",
                key=f"models.{alias}.options.recording",
            )
        path = Path(value).expanduser()
        if not path.is_absolute():
            loaded = context.loaded
            path = (loaded.path.parent if loaded.path is not None else Path.cwd()) / path
        source = options.get("alias") or alias
        if not isinstance(source, str):
            raise ConfigError("options.alias must be an alias name", key=f"models.{alias}.options.alias")
        recording = read_recording(path)
        capabilities = recording.capabilities.get(source) or Capabilities(
            chat=True,
            classify=True,
            vision=binding.capabilities.vision,
            logprobs=binding.capabilities.logprobs,
        )
        model = recording.models.get(source) or binding.model
        return cls(
            alias,
            recording,
            source_alias=source,
            model=model,
            capabilities=capabilities,
            price=binding.price,
        )

    def _entry(self, request: ChatRequest | ClassifyRequest) -> dict[str, Any]:
        canonical = canonical_request(self.source_alias, request)
        key = request_key(canonical)
        entry = self.recording.entries.get(key)
        if entry is None:
            path = self.recording.path
            raise ReplayMiss(
                f"{self.name}: no recorded response for this {node_of(request)} request to alias "
                f"{self.source_alias!r} (ticket: {ticket_preview(canonical)!r}, key {key[:16]}) in {path}. "
                f"Record it by running the same command against the live models with --record {path} "
                "(it appends), then replay again",
                model=self.model,
            )
        error = entry.get("error")
        if error is not None:
            cls = _ERRORS.get(str(error.get("type")), errors.ModelError)
            status = error.get("status")
            raise cls(
                f"(replayed) {error.get('message', '')}",
                model=self.model,
                status=status if isinstance(status, int) else None,
            )
        response: dict[str, Any] = entry["response"]
        return response

    async def chat(self, request: ChatRequest) -> ChatResult:
        r = self._entry(request)
        if r.get("stopped_early"):
            self._cut_short(request, "this reply was stopped early when recorded")
        return self._chat_result(r)

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult:
        result = self._chat_result(self._entry(request))
        stopped = held_reply_until(result, decide, self.price.cost)
        if stopped is not None:
            return stopped
        if result.stopped_early:
            self._cut_short(request, "the recorded reply was stopped early, and this one reads further")
        return result

    def _cut_short(self, request: ChatRequest, why: str) -> NoReturn:
        canonical = canonical_request(self.source_alias, request)
        path = self.recording.path
        raise ReplayMiss(
            f"{self.name}: {why}, so the rest of the {node_of(request)} reply of alias "
            f"{self.source_alias!r} (ticket: {ticket_preview(canonical)!r}) is not in {path}. "
            f"Record it again with --record {path} with the early gate off or with the gate "
            "you replay with",
            model=self.model,
        )

    def _chat_result(self, r: dict[str, Any]) -> ChatResult:
        logprobs = r.get("logprobs")
        return ChatResult(
            text=str(r.get("text", "")),
            model=str(r.get("model") or self.model),
            endpoint=str(r.get("endpoint") or self.name),
            usage=Usage.model_validate(r.get("usage") or {}),
            latency_ms=float(r.get("latency_ms") or 0.0),
            logprobs=None
            if logprobs is None
            else tuple(
                TokenLogprob(str(t["token"]), float(t["logprob"]), _alternatives(t.get("top")))
                for t in logprobs
            ),
            finish_reason=r.get("finish_reason"),
            warnings=tuple(str(w) for w in r.get("warnings") or ()),
            stopped_early=bool(r.get("stopped_early")),
        )

    async def classify(self, request: ClassifyRequest) -> Classification:
        r = self._entry(request)
        return Classification(
            probabilities={str(k): float(v) for k, v in (r.get("probabilities") or {}).items()},
            model=str(r.get("model") or self.model),
            endpoint=str(r.get("endpoint") or self.name),
            usage=Usage.model_validate(r.get("usage") or {}),
            latency_ms=float(r.get("latency_ms") or 0.0),
        )

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"ReplayBackend(alias={self.alias!r}, source={self.source_alias!r}, recording={str(self.recording.path)!r})"


def replay_path(option: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The recording to answer from: ``option`` (``--replay``), else ``TRIAGEGATE_REPLAY``, else None."""
    value = option or environ.get(environment.REPLAY)
    return Path(value) if value else None


def replayed(loaded: LoadedSpec, option: str | Path | None, environ: Mapping[str, str]) -> LoadedSpec:
    """``loaded`` with every alias rebound to the recording, when ``option`` or ``TRIAGEGATE_REPLAY`` names one."""
    path = replay_path(option, environ)
    return loaded if path is None else with_replay(loaded, path)


def with_replay(loaded: LoadedSpec, recording: str | Path) -> LoadedSpec:
    """``loaded`` with every alias rebound to replay ``recording`` (its own recorded calls, no fallbacks).

    Prices and declared capabilities are kept (an alias the recording never saw presents
    them), as is each alias's model name for display.
    """
    path = str(Path(recording).expanduser().resolve())
    models = {
        alias: ModelBinding(
            backend="replay",
            model=binding.model,
            price=binding.price,
            capabilities=binding.capabilities,
            options={"recording": path, "alias": alias},
        )
        for alias, binding in loaded.spec.models.items()
    }
    return loaded.model_copy(update={"spec": loaded.spec.model_copy(update={"models": models})})


def _alternatives(recorded: Any) -> Mapping[str, float]:
    """Recorded alternatives: an object is what was read; anything else is what a provider
    sent malformed, replayed so that reading it fails as it did live."""
    if isinstance(recorded, dict):
        return {str(token): float(logprob) for token, logprob in recorded.items()}
    return RawAlternatives(recorded) if recorded is not None else {}
