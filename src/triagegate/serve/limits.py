"""Request limits: a per-key token bucket, a streaming body-size cap, and image size checks.

All of them answer before any model is called: a client over its rate gets 429 with
``Retry-After``, an oversized body or image 413, each with a stable error code.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import Message, Receive

from triagegate.serve.errors import ApiError
from triagegate.types import Ticket


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` spends one or says how long to wait."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 if a token was spent, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per identity, keeping at most ``max_identities`` (least recent evicted).

    The bound matters without API keys, where identities are client addresses.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_identities = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, identity: str) -> float:
        """0.0 when ``identity`` may proceed, else the seconds it should wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_identities:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
        return bucket.take(now)


def rate_limited(wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(
        "rate_limited",
        f"too many requests for this API key; retry after {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def body_too_large(limit: int) -> ApiError:
    return ApiError("body_too_large", f"request body is over the limit of {limit} bytes")


def capped_receive(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so reading more than ``limit`` body bytes raises a 413 ApiError.

    This catches chunked uploads and lying ``Content-Length`` headers, which a header
    check alone would let through.
    """
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise body_too_large(limit)
        return message

    return wrapped


def data_url_bytes(url: str) -> int:
    """The decoded size of a ``data:`` URL's payload (exact for base64, an upper bound otherwise)."""
    header, _, payload = url.partition(",")
    if header.endswith(";base64"):
        payload = payload.strip()
        return len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("=")))
    return len(payload)


def check_ticket_for_http(ticket: Ticket, max_image_bytes: int) -> None:
    """Refuse what a remote client must not send: server file paths, and images over the size limit."""
    for index, attachment in enumerate(ticket.attachments):
        if attachment.path is not None:
            raise ApiError(
                "invalid_ticket",
                f"attachments[{index}]: attachments by server path are not accepted over HTTP; "
                "send the image as a data: URL, an http(s) URL or a multipart upload",
            )
        if attachment.url is not None and attachment.url.startswith("data:"):
            size = data_url_bytes(attachment.url)
            if size > max_image_bytes:
                raise ApiError(
                    "image_too_large",
                    f"attachments[{index}]: image is {size} bytes, over the limit of {max_image_bytes}",
                )
