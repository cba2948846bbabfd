"""A valid 1x1 PNG, for tests that attach an image to a ticket."""

from __future__ import annotations

import struct
import zlib


def tiny_png() -> bytes:
    """The bytes of a valid 1x1 RGB PNG (signature, IHDR, one IDAT, IEND, with their CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )
