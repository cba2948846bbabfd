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

Stopping a reply early
----------------------
:func:`chat_until` asks any backend for a chat reply and lets the caller stop it part way:
``decide`` is called with the :class:`PartialReply` so far (text and log-probabilities)
after each streamed chunk, and answers ``None`` (not yet: ask again), ``"finish"``
(decided: read the reply to its end without asking again) or ``"stop"`` (decided: cancel
the rest). The early gate uses it: once the option-code token of a triage reply has
arrived, a ticket that will escalate need not wait for the rest of the mini model's reply.

The contract, whichever backend serves it:

* a reply ``decide`` never stops is the same :class:`ChatResult` ``chat`` returns (same
  text, log-probabilities, usage and warnings); ``decide`` has then been called last with
  ``complete=True``, on the whole reply, unless it had already answered;
* a stopped reply comes back with ``stopped_early=True``, the text and log-probabilities
  received up to and including the chunk ``decide`` stopped on, and the usage of what was
  sent (estimated with :func:`triagegate.cost.tokens_for_chars` when the server reports
  none for a cancelled stream, and flagged ``usage_estimated:stopped_early``);
* retries, fallbacks, rate limits and timeouts are those of ``chat``: a stream cut mid-reply
  is a transient failure, retried like a 5xx and then a :class:`~triagegate.errors.ModelError`;
  a stalled stream is bounded by the binding's timeout. A retried reply starts over, and so
  does ``decide``: it is called again from the new reply's first chunk, so it must judge
  each :class:`PartialReply` on its own (the last verdict is the one that counts);
* backends that cannot stream (a classifier, llama.cpp in-process) implement nothing: the
  whole reply is fetched with ``chat`` and ``decide`` is called once, on it. Scripted and
  replayed replies are offered to ``decide`` token by token, so they stop where a live
  stream with one token per chunk would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
    stopped_early: bool = False
    """The caller's ``decide`` stopped the reply part way (see :func:`chat_until`): ``text`` and
    ``logprobs`` are what had arrived, and ``finish_reason`` is ``None``."""


@dataclass(frozen=True, slots=True)
class PartialReply:
    """A chat reply as far as it has arrived, as :func:`chat_until` shows it to ``decide``."""

    text: str
    logprobs: Sequence[TokenLogprob]
    """The tokens so far with their log-probabilities; empty when none were asked for or sent."""
    complete: bool = False
    """This is the whole reply: nothing more will arrive."""


StreamVerdict = Literal["stop", "finish"]
"""What ``decide`` answers once it has seen enough: ``"stop"`` cancels the rest of the reply,
``"finish"`` reads it to the end without asking again."""

STOPPED_EARLY = "usage_estimated:stopped_early"
"""The warning a reply stopped early carries when its usage is an estimate of what was sent."""

Decide = Callable[[PartialReply], StreamVerdict | None]
"""Called with each :class:`PartialReply`; ``None`` means "not yet, ask again on the next chunk"."""


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


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that can stop a reply part way (see :func:`chat_until`)."""

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult: ...


async def chat_until(backend: ModelBackend, request: ChatRequest, decide: Decide) -> ChatResult:
    """``backend``'s reply to ``request``, stopped as soon as ``decide`` says ``"stop"``.

    Streams when the backend can (it has a ``chat_until`` method); otherwise fetches the
    whole reply with ``chat`` and calls ``decide`` once, with ``complete=True``. See the
    module docstring for the contract.
    """
    if isinstance(backend, StreamingBackend):
        return await backend.chat_until(request, decide)
    result = await backend.chat(request)
    decide(PartialReply(result.text, result.logprobs or (), complete=True))
    return result


def offer_tokens(result: ChatResult, decide: Decide, *, complete: bool = True) -> int | None:
    """Show ``decide`` a reply held whole as a stream of one token per chunk; the number of
    tokens it had seen when it said ``"stop"``, or ``None`` when it did not stop the reply.

    For backends that hold the reply already (scripted, replayed) but must stop where a
    live stream would. ``complete=False`` when ``result`` is itself a reply stopped early
    (a recording of one): its last token is then not shown as the end of the reply. Token
    by token only when the reply's log-probabilities spell its text; otherwise ``decide``
    sees it once, whole, and a stop counts all its tokens.
    """
    tokens = result.logprobs or ()
    texts = tokens.texts() if isinstance(tokens, RawTokenLogprobs) else [t.token for t in tokens]
    if not texts or "".join(texts) != result.text:
        verdict = decide(PartialReply(result.text, tokens, complete=complete))
        return len(tokens) if verdict == "stop" and not complete else None
    sofar = 0
    last = len(texts)
    for count in range(1, last + 1):
        sofar += len(texts[count - 1])
        whole = complete and count == last
        verdict = decide(PartialReply(result.text[:sofar], tokens[:count], complete=whole))
        if verdict == "stop":
            return None if whole else count
        if verdict == "finish":
            return None
    return None


def held_reply_until(
    result: ChatResult, decide: Decide, cost: Callable[[int, int], float]
) -> ChatResult | None:
    """A reply a backend holds whole (scripted, replayed), fed to ``decide`` as a live stream would be.

    Returns the reply cut where ``decide`` said ``"stop"`` (output tokens: those shown,
    priced with ``cost(input_tokens, output_tokens)``), ``result`` itself when it was
    recorded stopped early and ``decide`` stops at that same token, or ``None`` when
    ``decide`` did not stop it: the caller then answers with the whole reply (or, holding
    only a stopped one, says it cannot).
    """
    count = offer_tokens(result, decide, complete=not result.stopped_early)
    if count is None:
        return None
    if result.stopped_early and count == len(result.logprobs or ()):
        return result
    usage = result.usage
    return stopped_result(
        result,
        count,
        Usage(
            input_tokens=usage.input_tokens,
            output_tokens=count,
            cost_usd=cost(usage.input_tokens, count),
            requests=usage.requests,
        ),
    )


def stopped_result(result: ChatResult, count: int, usage: Usage) -> ChatResult:
    """``result`` cut after its first ``count`` tokens (as :func:`offer_tokens` counted them)."""
    tokens = result.logprobs or ()
    texts = [t.token for t in tokens[:count]]
    return ChatResult(
        text="".join(texts),
        model=result.model,
        endpoint=result.endpoint,
        usage=usage,
        latency_ms=result.latency_ms,
        logprobs=tuple(tokens[:count]),
        finish_reason=None,
        warnings=(*(w for w in result.warnings if w != STOPPED_EARLY), STOPPED_EARLY),
        stopped_early=True,
    )
