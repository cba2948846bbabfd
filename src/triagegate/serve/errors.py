"""Every error the API returns has one JSON shape, ``{"error": {"code", "message", "type", "param"}}``.

``code`` is stable and meant for programs (clients branch on it); ``message`` is for
people and may change. The table :data:`CODES` is the complete list, so the OpenAPI
description and the tests can check against it. ``type`` (from the status) and ``param``
(the request field at fault, or null) make the same body OpenAI's error shape, so the
OpenAI-compatible routes and the middleware in front of every route share one error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field
from starlette.types import Send

CODES: dict[str, int] = {
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "image_too_large": 413,
    "batch_too_large": 422,
    "unsupported_media_type": 415,
    "malformed_request": 400,
    "invalid_ticket": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "invalid_request": 400,
    "model_not_found": 404,
    "model_failed": 502,
    "model_unavailable": 503,
    "handoff_not_found": 404,
    "handoff_resolved": 409,
    # 423, not 409 or 5xx: OpenAI's SDKs retry those, and each retry would be a new ticket.
    "awaiting_human": 423,
    "invalid_answer": 422,
}
"""Stable error codes and the HTTP status each one is sent with."""


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status: what the official SDKs and proxies expect to read."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code: " + ", ".join(CODES))
    message: str = Field(description="What went wrong and what to do, for people.")
    type: str = Field(
        description="OpenAI's error type: invalid_request_error, authentication_error, rate_limit_error "
        "or server_error."
    )
    param: str | None = Field(description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """Raised anywhere in a request to answer with ``code``'s status and a JSON error body."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = CODES[code]
        self.message = message
        self.headers = dict(headers or {})
        self.param = param


def error_json(code: str, message: str, param: str | None = None) -> bytes:
    error = {"code": code, "message": message, "type": error_type(CODES[code]), "param": param}
    return json.dumps({"error": error}).encode()


async def send_error(send: Send, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer a raw ASGI request with an error (for middleware that runs before the app)."""
    body = error_json(code, message)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": CODES[code], "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes`` (grouped by status)."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(CODES[code], []).append(code)
    return {
        status: {"model": ErrorResponse, "description": "Error; code is one of: " + ", ".join(names)}
        for status, names in sorted(by_status.items())
    }
