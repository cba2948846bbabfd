"""The ASGI layer in front of the routes: request ids, auth, rate limits, body caps, metrics, access log.

It is plain ASGI rather than Starlette's ``BaseHTTPMiddleware`` so it adds no task hop
per request and so the request id bound with :mod:`structlog.contextvars` here is seen
by every log line the pipeline writes while answering. ``/v1/`` paths need an API key;
``/metrics`` needs the metrics token when one is set, else an API key when there are keys;
probes and the OpenAPI document are open so orchestrators can read them.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triagegate.log import get_logger
from triagegate.serve.auth import KeyRing
from triagegate.serve.errors import ApiError, send_error
from triagegate.serve.limits import RateLimiter, body_too_large, capped_receive, rate_limited
from triagegate.serve.metrics import ServiceMetrics

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
PROTECTED_PREFIX = "/v1/"
METRICS_PATH = "/metrics"

log = get_logger("triagegate.serve")


def request_id_from(incoming: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is short and plain, else a fresh one (never echo junk into logs)."""
    if incoming and _VALID_REQUEST_ID.match(incoming):
        return incoming.decode("ascii")
    return uuid.uuid4().hex


class Gate:
    """Wraps the app; see the module docstring for what it does, in order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        limiter: RateLimiter,
        max_body_bytes: int,
        metrics: ServiceMetrics,
        routes: frozenset[str],
        metrics_token: str | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.metrics_keys = KeyRing([metrics_token]) if metrics_token else keys
        self.metrics_what = "metrics token" if metrics_token else "API key"
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER))
        echo = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        path: str = scope["path"]
        route = path if path in self.routes else "other"
        identity = "-"
        self.metrics.in_flight.inc()
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    if path.startswith(PROTECTED_PREFIX):
                        identity = self._admit(scope, headers)
                        receive = capped_receive(receive, self.max_body_bytes)
                    elif path == METRICS_PATH and self.metrics_keys.enabled:
                        identity = self._authenticate(self.metrics_keys, headers, self.metrics_what)
                    await self.app(scope, receive, send_with_id)
                except ApiError as exc:
                    await send_error(send_with_id, exc.code, exc.message, exc.headers.items())
                seconds = time.perf_counter() - started
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=route,
                    status=status,
                    client=identity,
                    duration_ms=round(seconds * 1000, 3),
                )
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)

    def _admit(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """Authenticate, rate-limit and size-check a protected request; returns who it is."""
        if self.keys.enabled:
            identity = self._authenticate(self.keys, headers)
        else:
            client = scope.get("client")
            identity = f"addr-{client[0]}" if client else "addr-unknown"
        wait = self.limiter.check(identity)
        if wait > 0:
            raise rate_limited(wait)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise body_too_large(self.max_body_bytes)
        return identity

    @staticmethod
    def _authenticate(keys: KeyRing, headers: dict[bytes, bytes], what: str = "API key") -> str:
        identity = keys.identify(headers.get(b"authorization"))
        if identity is None:
            raise ApiError(
                "unauthorized",
                f"missing or invalid {what}; send 'Authorization: Bearer <{what.split()[-1]}>'",
                headers={"WWW-Authenticate": 'Bearer realm="triagegate"'},
            )
        return identity
