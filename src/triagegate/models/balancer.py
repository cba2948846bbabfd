"""Several endpoints serving one model alias: spread the load, and keep away from one that fails.

Choice: **least in flight, by weight, with weighted round robin among equals**. A request
goes to the available endpoint with the fewest requests in flight per unit of weight,
counted in whole requests (weights scaled so the lightest endpoint's unit is one request);
among endpoints level on that count, to the one sent the fewest requests per unit of
weight, which is weighted round robin. Endpoints that keep up are level nearly all the time,
so the spread follows the weights closely (comparing exact fractions instead let an idle
light endpoint win over a busier heavy one and pulled the spread towards equal shares);
a deployment that is slow, or held back by its own limits, keeps requests in flight longer,
falls a whole request behind and is passed over until the others catch up, where plain
round robin would keep queueing its share there. An endpoint whose request or token
limiter is full is passed over while another has room.

Health is a small circuit breaker per endpoint, a pure state machine (:class:`Health`):

* *closed*: in use. ``cooldown_after`` failed attempts in a row open it;
* *open* (cooling down): sent nothing for ``cooldown_s`` seconds;
* *half-open*: after the cool-down, one request at a time is let through; its success
  closes the breaker, its failure opens it for another ``cooldown_s``.

Failures that count are those of the endpoint rather than of the request: connection
errors, timeouts, 5xx and 429 (:class:`~triagegate.errors.ModelUnavailable`,
:class:`~triagegate.errors.ModelTimeout`, :class:`~triagegate.errors.RateLimited`) and a
401, 403 or 404 (a key or URL wrong for that endpoint). Each endpoint makes one attempt per
request; a failed attempt moves the request at once to the next endpoint. When every
available endpoint has failed it, the request waits the backoff and starts another round,
up to ``rounds`` rounds (the binding's ``max_retries`` + 1, so one endpoint behaves as
today's retries). Any other :class:`~triagegate.errors.ModelError` (a 400, a reply that is
not valid) is tried on the other endpoints once, without another round;
:class:`~triagegate.errors.UnsupportedOperation` is raised at once. When no endpoint is
available (all cooling down) the request fails at once with
:class:`~triagegate.errors.ModelUnavailable`, so an alias's ``fallbacks`` take over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from triagegate.errors import ModelError, ModelTimeout, ModelUnavailable, RateLimited, UnsupportedOperation
from triagegate.log import get_logger
from triagegate.models.base import (
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    Decide,
    ModelBackend,
    chat_until,
)
from triagegate.types import Usage

log = get_logger("triagegate.models")
T = TypeVar("T", ChatResult, Classification)
HEALTH_STATUSES = frozenset({401, 403, 404})
"""Permanent statuses that say the endpoint (its key or URL) is wrong, not the request."""


@runtime_checkable
class Limited(Protocol):
    """A backend that can say whether its own request and token limiters would admit a request now."""

    def has_capacity(self) -> bool: ...


@dataclass(slots=True)
class Health:
    """One endpoint's circuit breaker. Times are ``time.monotonic()`` seconds, passed in."""

    cooldown_s: float
    cooldown_after: int
    failures: int = 0
    """Failed attempts in a row."""
    open_until: float | None = None
    """When the cool-down ends; ``None`` while the breaker is closed."""
    probing: bool = False
    """A half-open trial request is in flight."""

    def available(self, now: float) -> bool:
        if self.open_until is None:
            return True
        return now >= self.open_until and not self.probing

    def half_open(self, now: float) -> bool:
        return self.open_until is not None and now >= self.open_until

    def sent(self, now: float) -> None:
        if self.half_open(now):
            self.probing = True

    def succeeded(self) -> bool:
        """Record a success; True when it closed an open breaker."""
        recovered = self.open_until is not None
        self.failures, self.open_until, self.probing = 0, None, False
        return recovered

    def failed(self, now: float) -> bool:
        """Record a failure; True when it (re)opened the breaker."""
        self.failures += 1
        if self.open_until is not None or self.failures >= self.cooldown_after:
            self.open_until, self.probing = now + self.cooldown_s, False
            return True
        return False


@dataclass(eq=False, slots=True)
class _Slot:
    backend: ModelBackend
    weight: float
    health: Health
    limited: Limited | None
    in_flight: int = 0
    sent: float = 0.0
    """Requests sent, counted from par when the endpoint rejoins after a cool-down."""


def choose(slots: Sequence[_Slot], tried: set[int], now: float) -> int | None:
    """The index of the slot the next attempt goes to, or ``None`` when none is available.

    Available: its breaker lets a request through and this request has not tried it yet.
    Among those: one whose limiters have room, then fewest in flight per weight, counted in
    whole requests of the lightest endpoint (so endpoints that keep up compare equal), then
    fewest sent per weight, then the earlier in the list.
    """
    best: int | None = None
    best_key: tuple[bool, int, float] | None = None
    unit = min(slot.weight for slot in slots)
    for index, slot in enumerate(slots):
        if index in tried or not slot.health.available(now):
            continue
        full = slot.limited is not None and not slot.limited.has_capacity()
        key = (full, math.floor(slot.in_flight * unit / slot.weight), slot.sent / slot.weight)
        if best_key is None or key < best_key:
            best, best_key = index, key
    return best


def counts_against_endpoint(exc: ModelError) -> bool:
    """Whether ``exc`` says the endpoint is unwell (or misconfigured), rather than the request bad."""
    return isinstance(exc, ModelUnavailable | ModelTimeout | RateLimited) or exc.status in HEALTH_STATUSES


class BalancedBackend:
    """One alias served by several endpoints of the same model; see the module docstring.

    ``endpoints`` are ``(backend, weight)`` pairs, each backend making a single attempt per
    call (its own retries off); ``backoff(round)`` is the wait before round ``round + 1``.
    Results name the endpoint that answered (``ChatResult.endpoint``) and count every
    attempt made, the failed ones included, in ``usage.requests``.
    """

    def __init__(
        self,
        alias: str,
        endpoints: Sequence[tuple[ModelBackend, float]],
        *,
        cooldown_s: float = 30.0,
        cooldown_after: int = 3,
        rounds: int = 1,
        backoff: Callable[[int], float] = lambda _round: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("a balanced alias needs at least one endpoint")
        if any(weight <= 0 for _, weight in endpoints):
            raise ValueError("endpoint weights must be positive")
        self.alias = alias
        self.slots = [
            _Slot(
                backend,
                float(weight),
                Health(cooldown_s, cooldown_after),
                backend if isinstance(backend, Limited) else None,
            )
            for backend, weight in endpoints
        ]
        first = self.slots[0].backend
        self.name = f"{alias}@balanced"
        self.model = first.model
        self.capabilities = first.capabilities
        self.rounds = max(1, rounds)
        self._backoff = backoff
        self._clock = clock

    @property
    def endpoints(self) -> list[ModelBackend]:
        return [slot.backend for slot in self.slots]

    async def chat(self, request: ChatRequest) -> ChatResult:
        return await self._balanced(lambda backend: backend.chat(request))

    async def chat_until(self, request: ChatRequest, decide: Decide) -> ChatResult:
        return await self._balanced(lambda backend: chat_until(backend, request, decide))

    async def classify(self, request: ClassifyRequest) -> Classification:
        return await self._balanced(lambda backend: backend.classify(request))

    async def _balanced(self, call: Callable[[ModelBackend], Awaitable[T]]) -> T:
        failed_attempts = 0
        last: ModelError | None = None
        for round_ in range(1, self.rounds + 1):
            tried: set[int] = set()
            retry_afters: list[float | None] = []
            transient = False
            while (index := choose(self.slots, tried, self._clock())) is not None:
                tried.add(index)
                slot = self.slots[index]
                try:
                    result = await self._attempt(slot, call)
                except UnsupportedOperation:
                    raise
                except ModelError as exc:
                    failed_attempts += 1
                    last = exc
                    transient = transient or counts_against_endpoint(exc)
                    retry_afters.append(exc.retry_after if isinstance(exc, RateLimited) else None)
                    continue
                if failed_attempts:
                    result = dataclasses.replace(result, usage=result.usage + Usage(requests=failed_attempts))
                return result
            if not tried:
                raise self._none_available(last)
            if not transient or round_ == self.rounds:
                break
            waits = [w for w in retry_afters if w is not None]
            delay = min(waits) if len(waits) == len(retry_afters) else self._backoff(round_)
            log.warning(
                "endpoints_retry", alias=self.alias, round=round_, tried=len(tried), delay=round(delay, 3)
            )
            await asyncio.sleep(delay)
        assert last is not None
        raise last

    async def _attempt(self, slot: _Slot, call: Callable[[ModelBackend], Awaitable[T]]) -> T:
        slot.health.sent(self._clock())
        slot.in_flight += 1
        slot.sent += 1
        try:
            result = await call(slot.backend)
        except ModelError as exc:
            if counts_against_endpoint(exc) and slot.health.failed(self._clock()):
                log.warning(
                    "endpoint_cooling_down",
                    alias=self.alias,
                    endpoint=slot.backend.name,
                    failures=slot.health.failures,
                    cooldown_s=slot.health.cooldown_s,
                    error=type(exc).__name__,
                )
            elif not counts_against_endpoint(exc) and slot.health.succeeded():
                self._rejoin(slot)  # it answered: the request, not the endpoint, was at fault
            log.debug(
                "endpoint_failed", alias=self.alias, endpoint=slot.backend.name, error=type(exc).__name__
            )
            raise
        except BaseException:
            slot.health.probing = False
            raise
        finally:
            slot.in_flight -= 1
        if slot.health.succeeded():
            self._rejoin(slot)
            log.info("endpoint_recovered", alias=self.alias, endpoint=slot.backend.name)
        return result

    def _rejoin(self, slot: _Slot) -> None:
        """Put an endpoint back at par with the others (plus the probe it just answered), so it does
        not win every tie until it has caught up with the requests it missed."""
        others = [s.sent / s.weight for s in self.slots if s is not slot and s.health.open_until is None]
        if others:
            slot.sent = min(others) * slot.weight + 1

    def _none_available(self, last: ModelError | None) -> ModelUnavailable:
        now = self._clock()
        waits = [s.health.open_until - now for s in self.slots if s.health.open_until is not None]
        soonest = max(0.0, min(waits)) if waits else 0.0
        detail = f"; last error: {last}" if last is not None else ""
        return ModelUnavailable(
            f"{self.alias}: all {len(self.slots)} endpoints are cooling down after repeated failures "
            f"(the next is tried again in {soonest:.1f} s); add fallbacks to this alias to answer "
            f"meanwhile{detail}",
            model=self.model,
        )

    async def aclose(self) -> None:
        for slot in self.slots:
            await slot.backend.aclose()
