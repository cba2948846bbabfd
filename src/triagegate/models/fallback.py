"""An ordered fallback chain: try each endpoint in turn until one answers.

Each backend has already spent its own retries before the chain moves on, so a chain of
two endpoints with three retries each makes at most eight attempts. An alias with several
``endpoints`` is one :class:`~triagegate.models.balancer.BalancedBackend` here: it has tried
its endpoints (or found them all cooling down) before the chain moves to the next alias. Permanent errors of
the request itself (a schema the model cannot follow, an unsupported operation) are not
retried elsewhere: only provider failures move to the next endpoint.

:meth:`FallbackChain.chat_until` streams from each endpoint in turn (or fetches the whole
reply from one that cannot stream); a reply that fails part way restarts on the next
endpoint, and ``decide`` with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from triagegate.errors import ModelError, UnsupportedOperation
from triagegate.log import get_logger
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    Decide,
    ModelBackend,
    chat_until,
)

log = get_logger("triagegate.models")
T = TypeVar("T")


class FallbackChain:
    def __init__(self, alias: str, chain: list[ModelBackend]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one backend")
        self.alias = alias
        self.chain = chain
        self.name = chain[0].name
        self.model = chain[0].model
        caps = [b.capabilities for b in chain]
        self.capabilities = Capabilities(
            chat=all(c.chat for c in caps),
            classify=all(c.classify for c in caps),
            vision=all(c.vision for c in caps),
            logprobs=all(c.logprobs for c in caps),
            json_schema=all(c.json_schema for c in caps),
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        return await self._first_answer(lambda backend: backend.chat(request))

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult:
        return await self._first_answer(lambda backend: chat_until(backend, request, decide))

    async def classify(self, request: ClassifyRequest) -> Classification:
        return await self._first_answer(lambda backend: backend.classify(request))

    async def _first_answer(self, call: Callable[[ModelBackend], Awaitable[T]]) -> T:
        last: ModelError | None = None
        for index, backend in enumerate(self.chain):
            try:
                return await call(backend)
            except UnsupportedOperation:
                raise
            except ModelError as exc:
                last = exc
                self._log_failover(index, backend, exc)
        assert last is not None
        raise last

    def _log_failover(self, index: int, backend: ModelBackend, exc: ModelError) -> None:
        nxt = self.chain[index + 1].name if index + 1 < len(self.chain) else None
        log.warning(
            "model_failover",
            alias=self.alias,
            failed=backend.name,
            error=type(exc).__name__,
            detail=str(exc),
            next=nxt,
        )

    async def aclose(self) -> None:
        for backend in self.chain:
            await backend.aclose()
