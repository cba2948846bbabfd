"""A scripted backend: replies come from a Python function, for unit tests and examples.

Like any other backend it is selected in a graph file (``backend: scripted``); the
function is injected by the embedding code through ``extras={"scripted": {alias: fn}}``.
It exists so tests of the graph's own logic need no network and no mock library. Tests
of the HTTP path use the real ``openai`` backend against a loopback server instead.

``chat_until`` offers the scripted reply to ``decide`` one token at a time when its
log-probabilities spell its text (return a :class:`ChatResult` with ``logprobs`` to script
a stream), so the early gate stops a scripted reply where it would stop a live stream.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from triagegate.errors import ConfigError, UnsupportedOperation
from triagegate.models import BuildContext
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    Decide,
    held_reply_until,
)
from triagegate.spec import ModelBinding
from triagegate.types import Usage

ChatHandler = Callable[[ChatRequest], "str | ChatResult | Awaitable[str | ChatResult]"]
ClassifyHandler = Callable[[ClassifyRequest], "dict[str, float] | Awaitable[dict[str, float]]"]


class ScriptedBackend:
    def __init__(
        self,
        alias: str,
        binding: ModelBinding,
        *,
        chat: ChatHandler | None = None,
        classify: ClassifyHandler | None = None,
    ) -> None:
        self.alias = alias
        self.binding = binding
        self.name = f"{alias}@scripted"
        self.model = binding.model or "scripted"
        self._chat = chat
        self._classify = classify
        self.calls: list[ChatRequest | ClassifyRequest] = []
        self.capabilities = Capabilities(
            chat=chat is not None,
            classify=classify is not None,
            vision=binding.capabilities.vision,
            logprobs=binding.capabilities.logprobs,
        )

    @classmethod
    def from_binding(cls, alias: str, binding: ModelBinding, context: BuildContext) -> ScriptedBackend:
        handlers: dict[str, Any] = context.extras.get("scripted", {}).get(alias, {})
        if not handlers:
            raise ConfigError(
                f"no scripted handlers for alias {alias!r}; pass extras={{'scripted': {{{alias!r}: {{'chat': fn}}}}}}"
            )
        return cls(alias, binding, chat=handlers.get("chat"), classify=handlers.get("classify"))

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self._chat is None:
            raise UnsupportedOperation(f"{self.name} has no chat handler")
        self.calls.append(request)
        started = time.perf_counter()
        reply: Any = self._chat(request)
        if isinstance(reply, Awaitable):
            reply = await reply
        if isinstance(reply, ChatResult):
            return reply
        text = str(reply)
        chars_in = sum(len(m.text) for m in request.messages)
        usage = Usage(input_tokens=chars_in // 4, output_tokens=len(text) // 4 + 1, requests=1)
        usage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=self.binding.price.cost(usage.input_tokens, usage.output_tokens),
            requests=1,
        )
        return ChatResult(
            text=text,
            model=self.model,
            endpoint=self.name,
            usage=usage,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult:
        """The scripted reply, cut where ``decide`` stops it (output tokens: those shown)."""
        result = await self.chat(request)
        return held_reply_until(result, decide, self.binding.price.cost) or result

    async def classify(self, request: ClassifyRequest) -> Classification:
        if self._classify is None:
            raise UnsupportedOperation(f"{self.name} has no classify handler")
        self.calls.append(request)
        started = time.perf_counter()
        probs: Any = self._classify(request)
        if isinstance(probs, Awaitable):
            probs = await probs
        return Classification(
            probabilities=dict(probs),
            model=self.model,
            endpoint=self.name,
            usage=Usage(requests=1),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        return None
