"""Turning a ticket's image attachment into something a vision model can read.

Local files are inlined as base64 ``data:`` URLs (providers cannot read our disk), data
URLs are checked, and http(s) URLs pass through untouched for the provider to fetch. The
image type is sniffed from the bytes, never taken from a file extension, so a renamed
file or a mislabelled data URL is caught here rather than as an opaque provider 400.
Errors name the attachment by path (or "data: URL") and say what to do; they never
include image bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re

from triagegate.errors import InputError
from triagegate.models.base import ImagePart
from triagegate.spec import Limits
from triagegate.types import Attachment

_SNIFF_BYTES = 12
_DATA_URL = re.compile(r"^data:(?P<media>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)$", re.DOTALL)
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


def sniff_image_type(head: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF or WebP bytes from their magic numbers, else ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


async def load_image_part(attachment: Attachment, limits: Limits) -> ImagePart:
    """An :class:`ImagePart` for ``attachment``; raises :class:`InputError` if it cannot be sent.

    The file is read in a worker thread so a slow disk does not stall the event loop.
    """
    if attachment.path is not None:
        data = await asyncio.to_thread(_read_file, attachment, limits)
        media = _check_bytes(attachment, data, limits)
        return ImagePart(f"data:{media};base64,{base64.b64encode(data).decode('ascii')}")
    url = _url(attachment)
    if url.startswith("data:"):
        _decode_data_url(attachment, url, limits)
    return ImagePart(url)


def check_attachment(attachment: Attachment, limits: Limits) -> None:
    """Validate ``attachment`` as :func:`load_image_part` would, without encoding it (for dry runs).

    A local file is checked by size and its first bytes only; http(s) URLs are not fetched.
    """
    if attachment.path is not None:
        size = _file_size(attachment, limits)
        try:
            with open(attachment.path, "rb") as handle:
                head = handle.read(_SNIFF_BYTES)
        except OSError as exc:
            raise _unreadable(attachment, exc) from None
        if size == 0:
            raise _empty(attachment)
        _check_type(attachment, sniff_image_type(head), limits)
        return
    url = _url(attachment)
    if url.startswith("data:"):
        _decode_data_url(attachment, url, limits)


def _url(attachment: Attachment) -> str:
    if attachment.url is None:
        raise InputError("an attachment needs a path or a URL")
    return attachment.url


def _read_file(attachment: Attachment, limits: Limits) -> bytes:
    assert attachment.path is not None
    _file_size(attachment, limits)
    try:
        with open(attachment.path, "rb") as handle:
            data = handle.read(limits.max_image_bytes + 1)
    except OSError as exc:
        raise _unreadable(attachment, exc) from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(attachment, len(data), limits)
    return data


def _file_size(attachment: Attachment, limits: Limits) -> int:
    assert attachment.path is not None
    try:
        size = os.stat(attachment.path).st_size
    except FileNotFoundError:
        raise InputError(
            f"image {attachment.describe()} not found; check the path (relative paths are resolved "
            "against the current directory)"
        ) from None
    except OSError as exc:
        raise _unreadable(attachment, exc) from None
    if size > limits.max_image_bytes:
        raise _too_large(attachment, size, limits)
    return size


def _check_bytes(attachment: Attachment, data: bytes, limits: Limits) -> str:
    if not data:
        raise _empty(attachment)
    return _check_type(attachment, sniff_image_type(data[:_SNIFF_BYTES]), limits)


def _check_type(attachment: Attachment, media: str | None, limits: Limits) -> str:
    if media is None:
        raise InputError(
            f"image {attachment.describe()} is not a PNG, JPEG, GIF or WebP image; convert it to one of "
            f"the allowed types ({', '.join(limits.image_types)})"
        )
    if media not in limits.image_types:
        raise InputError(
            f"image {attachment.describe()} is {media}, which this graph does not accept; convert it to "
            f"one of {', '.join(limits.image_types)} (limits.image_types)"
        )
    return media


def _decode_data_url(attachment: Attachment, url: str, limits: Limits) -> bytes:
    name = attachment.describe()
    match = _DATA_URL.match(url)
    if match is None:
        raise InputError(f"image {name} is malformed; expected data:<type>;base64,<data>")
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    if "base64" not in params:
        raise InputError(f"image {name} is not base64-encoded; expected data:<type>;base64,<data>")
    declared = match["media"].strip().lower()
    declared = _ALIASES.get(declared, declared)
    if declared not in limits.image_types:
        raise InputError(
            f"image {name} declares type {declared or '(none)'}; send one of "
            f"{', '.join(limits.image_types)} (limits.image_types)"
        )
    payload = "".join(match["payload"].split())
    if len(payload) // 4 * 3 - 2 > limits.max_image_bytes:
        raise _too_large(attachment, len(payload) // 4 * 3, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"image {name} has invalid base64 data; re-encode the image") from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(attachment, len(data), limits)
    actual = _check_bytes(attachment, data, limits)
    if actual != declared:
        raise InputError(
            f"image {name} declares {declared} but contains {actual}; fix the media type in the data URL"
        )
    return data


def _too_large(attachment: Attachment, size: int, limits: Limits) -> InputError:
    return InputError(
        f"image {attachment.describe()} is {size:,} bytes, over the {limits.max_image_bytes:,}-byte limit; "
        "resize or compress it (or raise limits.max_image_bytes)"
    )


def _empty(attachment: Attachment) -> InputError:
    return InputError(f"image {attachment.describe()} is empty; attach the image file itself")


def _unreadable(attachment: Attachment, exc: OSError) -> InputError:
    reason = exc.strerror or type(exc).__name__
    return InputError(
        f"cannot read image {attachment.describe()}: {reason}; check the path and its permissions"
    )
