"""Turning a request body into tickets: JSON, or a form (multipart with uploaded images, or urlencoded).

Validation errors become 422 ``invalid_ticket`` naming the field; syntactically broken
bodies 400 ``malformed_request``; other content types 415. Uploaded images are sniffed
from their bytes (the client's declared type is ignored) and inlined as data URLs, so
the pipeline sees the same :class:`Ticket` whichever way it arrived.
"""

from __future__ import annotations

import base64
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from triagegate.images import sniff_image_type
from triagegate.serve.errors import ApiError
from triagegate.serve.limits import check_ticket_for_http
from triagegate.types import Attachment, Ticket

FORM_FIELDS = ("id", "text", "subject")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
IMAGE_FIELD = "images"


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tickets: list[Ticket] = Field(description="Tickets to run, answered in the same order.")


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "ticket"
    return f"{prefix}{where}: {first['msg']}"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def ticket_from_json(body: bytes) -> Ticket:
    try:
        return Ticket.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError("malformed_request", "request body is not valid JSON") from None
        raise ApiError("invalid_ticket", f"invalid ticket: {_validation_message(exc)}") from None


def json_body(body: bytes) -> Any:
    """Parse with pydantic's parser, whose nesting limit matches the single-ticket path (and its
    serialiser), so no depth of nesting can reach Python's recursion limit."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        raise ApiError(
            "malformed_request", "request body is not valid JSON (or is nested too deeply)"
        ) from None


def ticket_from_value(value: Any, index: int) -> Ticket:
    """Validate one item of a batch; raises ApiError naming its position."""
    try:
        return Ticket.model_validate(value)
    except ValidationError as exc:
        raise ApiError(
            "invalid_ticket", f"invalid ticket: {_validation_message(exc, f'tickets[{index}].')}"
        ) from None


def checked_ticket(fields: dict[str, Any], max_image_bytes: int, *, where: str = "") -> Ticket:
    """A ticket built from ``fields`` by another front door (the OpenAI-compatible route), validated
    and refused exactly as a JSON ``/v1/tickets`` body would be (422 ``invalid_ticket``, 413
    ``image_too_large``, server paths refused); ``where`` prefixes the field in messages."""
    try:
        ticket = Ticket.model_validate(fields)
    except ValidationError as exc:
        raise ApiError("invalid_ticket", f"invalid ticket: {_validation_message(exc, where)}") from None
    check_ticket_for_http(ticket, max_image_bytes)
    return ticket


async def _image_attachment(upload: UploadFile, max_image_bytes: int, allowed: list[str]) -> Attachment:
    data = await upload.read(max_image_bytes + 1)
    name = upload.filename or IMAGE_FIELD
    if len(data) > max_image_bytes:
        raise ApiError("image_too_large", f"image {name!r} is over the limit of {max_image_bytes} bytes")
    media = sniff_image_type(data[:12]) if data else None
    if media is None or media not in allowed:
        raise ApiError(
            "invalid_ticket",
            f"upload {name!r} is not an accepted image ({', '.join(allowed)}), judged by its bytes",
        )
    return Attachment(url=f"data:{media};base64,{base64.b64encode(data).decode('ascii')}")


async def ticket_from_form(
    request: Request, *, max_image_bytes: int, max_images: int, allowed: list[str]
) -> Ticket:
    """A ticket from ``multipart/form-data`` fields ``text``, ``subject``, ``id`` and ``images`` files."""
    async with request.form(max_files=max_images, max_fields=16, max_part_size=1024 * 1024) as form:
        fields: dict[str, Any] = {}
        attachments: list[Attachment] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != IMAGE_FIELD:
                    raise ApiError(
                        "invalid_ticket", f"unexpected file field {name!r}; send images as {IMAGE_FIELD!r}"
                    )
                attachments.append(await _image_attachment(value, max_image_bytes, allowed))
            elif name in FORM_FIELDS:
                fields[name] = value
            else:
                raise ApiError(
                    "invalid_ticket", f"unknown form field {name!r}; expected {', '.join(FORM_FIELDS)}"
                )
    fields["attachments"] = attachments
    try:
        return Ticket.model_validate(fields)
    except ValidationError as exc:
        raise ApiError("invalid_ticket", f"invalid ticket: {_validation_message(exc)}") from None


async def read_ticket(
    request: Request, *, max_image_bytes: int, max_images: int, allowed: list[str]
) -> Ticket:
    """The request's ticket, by content type, checked for what HTTP clients may send."""
    media = media_type(request)
    if is_json(media):
        ticket = ticket_from_json(await request.body())
    elif media in FORM_TYPES:
        ticket = await ticket_from_form(
            request, max_image_bytes=max_image_bytes, max_images=max_images, allowed=allowed
        )
    else:
        raise ApiError(
            "unsupported_media_type",
            f"content type {media or 'none'!r} is not accepted; send application/json, multipart/form-data "
            "or application/x-www-form-urlencoded",
        )
    check_ticket_for_http(ticket, max_image_bytes)
    return ticket
