"""Streaming batch input: JSONL, CSV or standard input, one row at a time.

Rows are parsed lazily and never accumulated, so memory stays flat however long the
input is. Each row becomes a :class:`Row` carrying the ticket's id and either its fields
or the reason it is unusable; turning fields into a :class:`Ticket` is left to
:func:`to_ticket` so a resumed batch can skip finished rows after reading only their ids.

Row ids are what make resuming work. A row without an ``id`` gets a deterministic one
derived from its line number and its exact bytes (``line<N>-<hash>``), so re-reading the
same input yields the same ids. ``line`` is the 1-based physical line on which the row
starts (CSV records may span lines).

JSONL rows are objects (``text`` required; ``id``, ``subject``, ``attachments`` — a list
of paths, URLs or ``{"path"|"url": ...}`` objects — and ``metadata`` optional; any other
key is kept in ``metadata``) or bare JSON strings (the text). CSV needs a header with a
``text`` column; ``id``, ``subject`` and ``attachments`` (a JSON list, or sources
separated by ``|``) are optional and other columns go to ``metadata``.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError

from triagegate.errors import InputError
from triagegate.types import Attachment, Ticket

Format = Literal["jsonl", "csv"]
FORMATS = ("auto", "jsonl", "csv")
TICKET_FIELDS = frozenset({"id", "text", "subject", "attachments", "metadata"})
CSV_FIELD_LIMIT = 64 * 1024 * 1024
"""Largest CSV cell accepted (a data-URL attachment can be several megabytes)."""


class RowError(InputError):
    """A row that cannot become a ticket; ``kind`` labels why (see :attr:`Row.kind`)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its id and fields, or why it cannot become a ticket (``error``)."""

    line: int
    id: str
    fields: dict[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    """Short label of the error: ``invalid_json``, ``invalid_utf8``, ``not_an_object``,
    ``bad_id``, ``missing_text``, ``invalid_ticket`` or ``bad_csv_row``."""


def derived_id(line: int, raw: bytes) -> str:
    """The id of a row that has none: stable for the same line number and bytes."""
    digest = hashlib.sha256(b"%d\n" % line + raw).hexdigest()[:12]
    return f"line{line}-{digest}"


def to_ticket(row: Row) -> Ticket:
    """The row as a validated :class:`Ticket`; raises :class:`RowError` naming the line."""
    if row.fields is None:
        raise RowError(f"line {row.line}: {row.error}", row.kind or "invalid_ticket")
    fields = row.fields
    text = fields.get("text")
    if not isinstance(text, str) or not text.strip():
        problem = "has no 'text'" if text is None or text == "" else "has a blank or non-string 'text'"
        raise RowError(f"line {row.line}: the ticket {problem}", "missing_text")
    values: dict[str, Any] = {"id": row.id, "text": text}
    if fields.get("subject") not in (None, ""):
        values["subject"] = fields["subject"]
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RowError(f"line {row.line}: 'metadata' must be an object", "invalid_ticket")
    extra = {k: v for k, v in fields.items() if k not in TICKET_FIELDS}
    if extra or metadata:
        values["metadata"] = {**extra, **metadata}
    try:
        values["attachments"] = _attachments(fields.get("attachments"))
        return Ticket.model_validate(values)
    except (ValidationError, ValueError) as exc:
        raise RowError(f"line {row.line}: invalid ticket: {_first_error(exc)}", "invalid_ticket") from None


def _first_error(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "ticket"
        return f"{where}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc)


def _attachments(value: Any) -> list[Attachment]:
    if value in (None, "", []):
        return []
    if not isinstance(value, list):
        raise ValueError("attachments: expected a list of paths, URLs or {'path'|'url': ...} objects")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Attachment.image(item))
        elif isinstance(item, dict):
            out.append(Attachment.model_validate(item))
        else:
            raise ValueError("attachments: each item must be a path, a URL or an object")
    return out


def resolve_format(source: str, requested: str, stream: IO[bytes]) -> Format:
    """``jsonl`` or ``csv``: as requested, else from the file suffix, else from the first byte.

    Sniffing peeks without consuming, so standard input can be sniffed too.
    """
    if requested not in FORMATS:
        raise InputError(f"unknown input format {requested!r}; use one of {', '.join(FORMATS)}")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    head = stream.peek(64) if hasattr(stream, "peek") else b""
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return "jsonl" if first in (b"{", b'"', b"") else "csv"


def open_input(source: str) -> IO[bytes]:
    """The input as a binary stream (``-`` is standard input); raises :class:`InputError`."""
    if source == "-":
        return sys.stdin.buffer
    try:
        return open(source, "rb")
    except OSError as exc:
        raise InputError(f"cannot read input {source}: {exc.strerror or exc}") from None


def read_rows(stream: IO[bytes], fmt: Format) -> Iterator[Row]:
    """Rows of ``stream`` in input order; blank lines are skipped but still counted."""
    return _jsonl_rows(stream) if fmt == "jsonl" else _csv_rows(stream)


def _jsonl_rows(stream: IO[bytes]) -> Iterator[Row]:
    for line, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\r\n")
        if line == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue
        yield _jsonl_row(line, raw)


def _jsonl_row(line: int, raw: bytes) -> Row:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Row(
            line, derived_id(line, raw), error=f"not valid UTF-8 (byte {exc.start})", kind="invalid_utf8"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Row(
            line,
            derived_id(line, raw),
            error=f"invalid JSON: {exc.msg} (column {exc.colno})",
            kind="invalid_json",
        )
    if isinstance(value, str):
        return Row(line, derived_id(line, raw), fields={"text": value})
    if not isinstance(value, dict):
        kind = type(value).__name__
        return Row(
            line,
            derived_id(line, raw),
            error=f"expected a JSON object or string, got {kind}",
            kind="not_an_object",
        )
    return _with_id(line, raw, value)


def _with_id(line: int, raw: bytes, fields: dict[str, Any]) -> Row:
    given = fields.get("id")
    if given is None or given == "":
        return Row(line, derived_id(line, raw), fields=fields)
    if isinstance(given, bool) or not isinstance(given, str | int):
        return Row(line, derived_id(line, raw), error="'id' must be a string or an integer", kind="bad_id")
    ticket_id = str(given)
    if len(ticket_id) > 200:
        return Row(line, derived_id(line, raw), error="'id' is longer than 200 characters", kind="bad_id")
    return Row(line, ticket_id, fields=fields)


def _csv_rows(stream: IO[bytes]) -> Iterator[Row]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputError(f"line 1: cannot read the CSV header: {exc}") from None
    columns = [c.strip().lower() if c.strip().lower() in TICKET_FIELDS else c.strip() for c in header]
    if "text" not in columns:
        raise InputError(f"the CSV header has no 'text' column (columns: {', '.join(columns) or 'none'})")
    last = reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = reader.line_num
            yield Row(
                start,
                derived_id(start, str(exc).encode()),
                error=f"unreadable CSV row: {exc}",
                kind="bad_csv_row",
            )
            continue
        last = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        raw = "\x1f".join(cells).encode("utf-8", "surrogatepass")
        if len(cells) > len(columns):
            yield Row(
                start,
                derived_id(start, raw),
                error=f"the row has {len(cells)} fields but the header has {len(columns)}",
                kind="bad_csv_row",
            )
            continue
        fields: dict[str, Any] = {}
        for name, cell in zip(columns, cells, strict=False):
            if cell != "":
                fields[name] = cell
        if "attachments" in fields:
            fields["attachments"] = _csv_attachments(fields["attachments"])
        yield _with_id(start, raw, fields)


def _csv_attachments(cell: str) -> Any:
    cell = cell.strip()
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return [part.strip() for part in cell.split("|") if part.strip()]


def count_rows(source: str, fmt: Format) -> int | None:
    """A quick row count for progress (newlines, less the CSV header); ``None`` for standard input.

    Blank lines and multi-line CSV records make it approximate; it is never used for logic.
    """
    if source == "-" or not os.path.isfile(source):
        return None
    lines = 0
    last = b"\n"
    with open(source, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if fmt == "csv" else lines


async def stream_rows(rows: Iterator[Row], chunk: int = 256) -> AsyncIterator[Row]:
    """``rows`` read in a worker thread, ``chunk`` at a time, so a slow pipe never blocks the loop."""
    while True:
        batch = await asyncio.to_thread(lambda: list(islice(rows, chunk)))
        if not batch:
            return
        for row in batch:
            yield row
