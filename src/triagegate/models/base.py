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

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    model: str
    endpoint: str
    usage: Usage
    latency_ms: float
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None


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
