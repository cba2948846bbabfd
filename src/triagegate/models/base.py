"""The contract every model backend meets.

A backend does at most two things, both async:

* ``chat``: answer a list of messages, optionally constrained to a JSON schema and
  optionally returning per-token log-probabilities (so confidence can be read from them);
* ``classify``: score a piece of text against a closed set of labels and return a
  probability per label (a trained classifier does this natively; an LLM does it by
  label scoring over single-token options).

Backends that cannot do one of them raise :class:`~triagegate.errors.UnsupportedOperation`.
Nodes only ever see this protocol, so a hosted API, an in-process llama.cpp model, a
scikit-learn classifier, a replay of recorded traffic and a scripted test double are
interchangeable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, overload, runtime_checkable

from triagegate.types import Usage


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image as a URL the provider can read: ``data:`` (already inlined) or http(s)."""

    url: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[ImagePart, ...] = ()


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """A named JSON schema for structured output (``response_format`` on OpenAI-style APIs)."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    json_schema: JsonSchema | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    top_logprobs: int = 0
    """0: no log-probabilities; N > 0: return the N most likely alternatives for each token."""


class TokenLogprob(NamedTuple):
    """One generated token with its log-probability.

    A named tuple rather than a frozen dataclass because a reply carries one per token and
    a frozen dataclass takes about twice as long to build.
    """

    token: str
    logprob: float
    top: Mapping[str, float] = MappingProxyType({})
    """The most likely alternatives at this position: ``{token: logprob}``. Reading it may
    raise :class:`MalformedLogprobs` when a backend parses it lazily (see :class:`RawAlternatives`)."""


class MalformedLogprobs(ValueError):
    """A provider's ``top_logprobs`` entry is not a list of ``{"token", "logprob"}`` objects."""


class RawAlternatives(Mapping[str, float]):
    """A token's ``top_logprobs`` as the provider sent them, converted on first read.

    A reply carries alternatives for every token but confidence reads them at one
    position, so converting them all up front costs about 0.09 ms per reply for nothing.
    A malformed entry raises :class:`MalformedLogprobs` when read, and readers treat that
    as "no log-probabilities" (the same fallback as a reply without any).
    """

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._parsed: dict[str, float] | None = None

    @property
    def raw(self) -> Any:
        return self._raw

    def _dict(self) -> dict[str, float]:
        if self._parsed is None:
            try:
                self._parsed = {str(alt["token"]): float(alt["logprob"]) for alt in self._raw or ()}
            except (AttributeError, KeyError, TypeError, ValueError):
                raise MalformedLogprobs(f"malformed top_logprobs entry: {str(self._raw)[:200]}") from None
        return self._parsed

    def __getitem__(self, token: str) -> float:
        return self._dict()[token]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"RawAlternatives({self._raw!r})"


class RawTokenLogprobs(Sequence[TokenLogprob]):
    """A reply's per-token log-probabilities, each :class:`TokenLogprob` built when read.

    Confidence needs every token's text but the alternatives at one position only, and
    building a TokenLogprob (with its :class:`RawAlternatives`) for each of a reply's ~50
    tokens cost about 20 us per reply. Texts and log-probabilities are checked up front by
    :meth:`from_openai`, so reading an entry never fails; only its alternatives may (see
    :class:`RawAlternatives`).
    """

    __slots__ = ("_logprobs", "_texts", "_tops")

    def __init__(self, texts: list[str], logprobs: list[float], tops: list[Any]) -> None:
        if not len(texts) == len(logprobs) == len(tops):
            raise ValueError("texts, logprobs and alternatives must have one entry per token")
        self._texts = texts
        self._logprobs = logprobs
        self._tops = tops

    @classmethod
    def from_openai(cls, content: Any) -> RawTokenLogprobs | None:
        """From OpenAI's ``choices[0].logprobs.content``; ``None`` when it is absent or a
        token's text or log-probability is missing or not a number."""
        if not isinstance(content, list):
            return None
        try:
            texts = [str(entry["token"]) for entry in content]
            logprobs = [float(entry["logprob"]) for entry in content]
            tops = [entry.get("top_logprobs") for entry in content]
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return cls(texts, logprobs, tops)

    def texts(self) -> list[str]:
        """Every token's text, in order (the list itself: do not modify it)."""
        return self._texts

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> TokenLogprob: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[TokenLogprob, ...]: ...

    def __getitem__(self, index: int | slice) -> TokenLogprob | tuple[TokenLogprob, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        return TokenLogprob(self._texts[index], self._logprobs[index], RawAlternatives(self._tops[index]))

    def __repr__(self) -> str:
        return f"RawTokenLogprobs({len(self)} tokens)"


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    model: str
    endpoint: str
    usage: Usage
    latency_ms: float
    logprobs: Sequence[TokenLogprob] | None = None
    finish_reason: str | None = None
    warnings: tuple[str, ...] = ()
    """What the backend did not take from the reply as given, as short codes for the node's
    NodeRun (``usage_out_of_bounds:prompt_tokens``: the reported count was replaced by an estimate)."""


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    text: str
    labels: tuple[str, ...]
    instructions: str = ""
    """Extra context for backends that classify by prompting (descriptions of the labels)."""


@dataclass(frozen=True, slots=True)
class Classification:
    probabilities: dict[str, float]
    model: str
    endpoint: str
    usage: Usage
    latency_ms: float
    warnings: tuple[str, ...] = ()
    """As :attr:`ChatResult.warnings`, for the chat calls a backend made to classify."""

    @property
    def best(self) -> tuple[str, float]:
        label = max(self.probabilities, key=self.probabilities.__getitem__)
        return label, self.probabilities[label]


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = True
    classify: bool = False
    vision: bool = False
    logprobs: bool = False
    json_schema: bool = True


@runtime_checkable
class ModelBackend(Protocol):
    """What nodes call. ``name`` identifies the endpoint in outcomes and logs (never a key)."""

    name: str
    model: str
    capabilities: Capabilities

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def classify(self, request: ClassifyRequest) -> Classification: ...

    async def aclose(self) -> None: ...
