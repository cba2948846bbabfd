"""The one reader for files of tickets and of labelled texts: JSONL, CSV or TSV, a path or ``-``.

``batch``, ``enqueue`` and the tuning commands (``train``, ``eval``, ``calibrate``) all read
through this module, so a file one of them accepts the others read the same way. Rows are
parsed lazily and never accumulated, so memory stays flat however long the input is.

**Formats.** ``--format`` wins; otherwise the suffix decides (``.jsonl``/``.ndjson``/``.json``,
``.csv``, ``.tsv``/``.tab``); otherwise the first bytes are sniffed without consuming them
(so standard input works too): a ``{`` or ``"`` means JSONL, anything else CSV. Text must be
UTF-8 (a byte-order mark is allowed). A file that looks binary (a NUL byte, mostly control
bytes, UTF-16, or the signature of an archive, spreadsheet, PDF or image) is refused as a
whole, naming the file; no message ever echoes raw bytes or control characters.

**Rows.** A JSONL line is an object, or a bare JSON string (the text). A CSV/TSV file has a
header row; a record may span lines, and ``line`` is always the 1-based physical line on
which a row starts. Blank lines and blank records are skipped but still counted. Empty
values (an empty cell, ``""``) count as absent. Cells past the header's width must be empty.

**Tickets.** ``text`` is required; ``id`` (a string or an integer), ``subject``,
``attachments``, ``metadata``, ``thread_id`` and ``messages`` are optional, matched
case-insensitively; every other
key or column goes into ``metadata``. ``attachments`` is a list of sources (a path, an
http(s) URL or a data URL, or ``{"path"|"url": ...}``); as text (a CSV cell, or a JSON
string) it is a JSON list or sources separated by ``|``. ``metadata`` as text is a JSON
object, ``messages`` (the turns before ``text``) a JSON array. The old ``images`` name is read as ``attachments`` when there is no ``attachments``
(deprecated; it logs a warning).

**Ids.** A row without an id gets one derived from its content, :func:`content_id`: the
same row gets the same id in every run, in ``batch`` and in ``enqueue``, whichever the
format, so re-running or re-enqueueing a file is idempotent. Identical rows are one ticket:
``batch`` writes the repeat as a ``skipped`` duplicate, and a repeat enqueued again
updates the same PostgreSQL row. A row that cannot become a ticket gets ``line<N>-<hash>``
from its line number and bytes, so its failure is recorded once too.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, TypeVar

from pydantic import ValidationError

from triagegate.errors import InputError
from triagegate.log import get_logger
from triagegate.types import Attachment, Ticket, is_blank

log = get_logger("triagegate.inputs")

Format = Literal["jsonl", "csv", "tsv"]
FORMATS = ("auto", "jsonl", "csv", "tsv")
SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}
TICKET_FIELDS = ("id", "text", "subject", "attachments", "metadata", "thread_id", "messages")
_FIELD_SET = frozenset(TICKET_FIELDS)
DEPRECATED_NAMES = frozenset({"images"})
"""Old names of ``attachments`` (``enqueue`` read an ``images`` column), still read, with a warning."""
CSV_FIELD_LIMIT = 64 * 1024 * 1024
"""Largest CSV cell accepted (a data-URL attachment can be several megabytes)."""
SNIFF_BYTES = 8192
MAX_ID_CHARS = 200
CONTENT_ID_PREFIX = "auto-"
_BOM = b"\xef\xbb\xbf"
_SIGNATURES = (
    (b"\x1f\x8b", "a gzip file", "decompress it first"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one)", "export the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0", "an Office document (.xls)", "export the sheet as CSV"),
    (b"%PDF-", "a PDF document", ""),
    (b"SQLite format 3\x00", "an SQLite database", ""),
    (b"\xfd7zXZ\x00", "an xz file", "decompress it first"),
    (b"\x28\xb5\x2f\xfd", "a zstd file", "decompress it first"),
    (b"\x89PNG", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF87a", "a GIF image", ""),
    (b"GIF89a", "a GIF image", ""),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"),
)
"""Signatures named in the refusal; other binary data is caught by its NUL or control bytes."""
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v\x1b")
_SURROGATE = re.compile("[\udc80-\udcff]")

T = TypeVar("T")


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to print: control and undecodable characters escaped, at most ``limit`` long."""
    out = []
    for char in text[:limit]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out) + ("…" if len(text) > limit else "")


def quoted(text: str, limit: int = 40) -> str:
    """``text`` in single quotes for a message, made :func:`printable`."""
    return f"'{printable(text, limit)}'"


def display_name(source: str) -> str:
    return "standard input" if source == "-" else printable(source, 200)


class InputFileError(InputError):
    """The input as a whole cannot be read (missing, binary, no usable header); names the source."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = message
        super().__init__(f"{display_name(source)}{f':{line}' if line else ''}: {message}")


class RowError(InputError):
    """A row that cannot become a ticket; ``kind`` labels why (see :attr:`Row.kind`)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Record(NamedTuple):
    """One parsed row before it means anything: its fields, or the ``problem`` that stopped parsing.

    ``raw`` is the row as read (a JSONL line; a CSV record as a JSON object), for derived ids
    of bad rows and for ``enqueue --poison``.
    """

    line: int
    fields: dict[str, Any] | None
    raw: bytes | None
    """``None`` for a CSV record with fields: made from them only when needed, see :meth:`raw_bytes`."""
    problem: str | None = None
    kind: str | None = None

    def raw_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.fields, ensure_ascii=False).encode("utf-8", "surrogateescape")


class Row(NamedTuple):
    """One input row as a ticket, or the reason it cannot be one.

    ``id`` is always set: the row's own, its :func:`content_id` (``derived``), or for a row
    without a ticket ``line<N>-<hash>``.
    """

    line: int
    id: str
    ticket: Ticket | None
    reason: str | None = None
    kind: str | None = None
    """Short label of the problem: ``invalid_json``, ``invalid_utf8``, ``not_an_object``,
    ``bad_id``, ``missing_text``, ``invalid_ticket`` or ``bad_csv_row``."""
    raw: bytes = b""
    derived: bool = False

    @property
    def error(self) -> str | None:
        """The problem as written into a failed outcome: ``line <N>: <reason>``."""
        return None if self.reason is None else f"line {self.line}: {self.reason}"

    def raw_text(self) -> str:
        """The row as read, for ``enqueue --poison`` (a good row's ticket as JSON when its bytes were not kept)."""
        if not self.raw and self.ticket is not None:
            return self.ticket.model_dump_json()
        return self.raw.decode("utf-8", "backslashreplace")


def line_id(line: int, raw: bytes) -> str:
    """The id of a row that cannot become a ticket: stable for the same line number and bytes."""
    digest = hashlib.sha256(b"%d\n" % line + raw).hexdigest()[:12]
    return f"line{line}-{digest}"


def _normal(text: str) -> str:
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def content_id(ticket: Ticket) -> str:
    """The id of a ticket that came without one: a hash of everything it carries.

    Text and subject are normalised (Unicode NFC, ``\\n`` line ends, surrounding whitespace
    dropped); attachments, metadata, the thread and its turns count as given (the last two only
    when present, so a ticket without them keeps the id it always had). So the same ticket read from JSONL or
    CSV, today or after a crash, by ``batch`` or ``enqueue``, gets the same id.
    """
    payload = {
        "text": _normal(ticket.text),
        "subject": _normal(ticket.subject) if ticket.subject else None,
        "attachments": [[a.kind.value, a.path, a.url] for a in ticket.attachments],
        "metadata": ticket.metadata,
    }
    if ticket.thread_id is not None:
        payload["thread_id"] = ticket.thread_id
    if ticket.messages:
        payload["messages"] = [[turn.role, _normal(turn.content)] for turn in ticket.messages]
    data = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return CONTENT_ID_PREFIX + digest


def open_input(source: str) -> IO[bytes]:
    """The input as a binary stream (``-`` is standard input); raises :class:`InputFileError`."""
    if source == "-":
        return sys.stdin.buffer
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise InputFileError("file not found", source=source) from None
    except IsADirectoryError:
        raise InputFileError("is a directory, not a file of rows", source=source) from None
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror or type(exc).__name__}", source=source) from None


def _peek(stream: IO[bytes], size: int) -> bytes:
    peek = getattr(stream, "peek", None)
    return bytes(peek(size)[:size]) if peek is not None else b""


def check_text(source: str, head: bytes) -> None:
    """Refuse input whose first bytes show it is not UTF-8 text (:class:`InputFileError`)."""
    head = head.removeprefix(_BOM)
    for signature, what, advice in _SIGNATURES:
        if head.startswith(signature):
            advice = f"; {advice}" if advice else ""
            raise InputFileError(f"this is {what}, not JSONL, CSV or TSV text{advice}", source=source)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputFileError(
            f"binary data (a NUL byte at offset {nul}), not JSONL, CSV or TSV text", source=source
        )
    controls = sum(1 for b in head if b < 0x20 and b not in _TEXT_CONTROLS)
    if head and controls > len(head) // 20:
        raise InputFileError(
            f"binary data ({controls} control bytes in the first {len(head)}), not JSONL, CSV or TSV text",
            source=source,
        )


def resolve_format(source: str, requested: str, stream: IO[bytes]) -> Format:
    """``jsonl``, ``csv`` or ``tsv``: as requested, else from the suffix, else from the first bytes.

    The stream is peeked, never consumed, and binary input is refused whatever was requested.
    """
    if requested not in FORMATS:
        raise InputError(f"unknown input format {quoted(requested)}; use one of {', '.join(FORMATS)}")
    head = _peek(stream, SNIFF_BYTES)
    check_text(source, head)
    if requested != "auto":
        return requested  # type: ignore[return-value]
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    first = head.removeprefix(_BOM).lstrip(b" \t\r\n")[:1]
    return "jsonl" if first in (b"{", b'"', b"") else "csv"


class Records:
    """The rows of one input, in order. ``columns`` is the CSV/TSV header (``None`` for JSONL
    or an empty file); it is read when the object is made, so a bad header fails at once."""

    def __init__(self, stream: IO[bytes], fmt: Format, *, source: str = "-") -> None:
        self.source = source
        self.format = fmt
        self.columns: list[str] | None = None
        self._iter: Iterator[Record]
        if fmt == "jsonl":
            self._iter = _jsonl_records(stream)
        else:
            self._iter = self._csv(stream, "\t" if fmt == "tsv" else ",")

    def __iter__(self) -> Iterator[Record]:
        return self._iter

    def __next__(self) -> Record:
        return next(self._iter)

    def _csv(self, stream: IO[bytes], delimiter: str) -> Iterator[Record]:
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return iter(())
        except csv.Error as exc:
            raise InputFileError(f"cannot read the header: {exc}", source=self.source, line=1) from None
        columns = _column_names(header)
        if any(_undecodable(c) for c in columns):
            raise InputFileError(
                "the header is not valid UTF-8 text; save the file as UTF-8", source=self.source, line=1
            )
        self.columns = columns
        return _csv_records(reader, columns)


def _column_names(header: list[str]) -> list[str]:
    """Stripped header names; a repeated name gets ``.1``, ``.2``... so no column is lost."""
    seen: dict[str, int] = {}
    out = []
    for cell in header:
        name = cell.strip()
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def _undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_JSON_TYPES = {list: "an array", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def _jsonl_records(stream: IO[bytes]) -> Iterator[Record]:
    for line, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\r\n")
        if line == 1:
            raw = raw.removeprefix(_BOM)
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"
            yield Record(line, None, raw, problem, "invalid_utf8")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(line, None, raw, f"not valid JSON: {exc.msg} (column {exc.colno})", "invalid_json")
            continue
        if isinstance(value, str):
            yield Record(line, {"text": value}, raw)
        elif isinstance(value, dict):
            yield Record(line, value, raw)
        else:
            got = _JSON_TYPES.get(type(value), type(value).__name__)
            yield Record(line, None, raw, f"expected a JSON object or string, got {got}", "not_an_object")


def _csv_records(reader: Any, columns: list[str]) -> Iterator[Record]:
    width = len(columns)
    last = reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = reader.line_num
            yield Record(start, None, str(exc).encode(), f"unreadable CSV row: {exc}", "bad_csv_row")
            continue
        last = reader.line_num
        joined = "".join(cells)
        if not joined.strip():
            continue
        if len(cells) > width:
            if any(c.strip() for c in cells[width:]):
                raw = json.dumps(cells, ensure_ascii=False).encode("utf-8", "surrogateescape")
                problem = f"the row has {len(cells)} fields but the header has {width}"
                yield Record(start, None, raw, problem, "bad_csv_row")
                continue
            cells = cells[:width]
        fields = dict(zip(columns, cells, strict=False))
        if _SURROGATE.search(joined):
            raw = json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogateescape")
            yield Record(start, None, raw, "not valid UTF-8; save the file as UTF-8", "invalid_utf8")
            continue
        yield Record(start, fields, None)


def read_records(stream: IO[bytes], fmt: Format, *, source: str = "-") -> Records:
    """The rows of ``stream`` as :class:`Record` s; a CSV/TSV header is read (and checked) now."""
    return Records(stream, fmt, source=source)


def read_rows(stream: IO[bytes], fmt: Format, *, source: str = "-") -> Iterator[Row]:
    """The rows of ``stream`` as :class:`Row` s, in input order; bad rows are yielded, never raised.

    A CSV/TSV header without a ``text`` column raises :class:`InputFileError` here, before
    the first row is asked for.
    """
    records = read_records(stream, fmt, source=source)
    if records.columns is not None and "text" not in {c.lower() for c in records.columns}:
        shown = ", ".join(quoted(c) for c in records.columns[:20]) or "none"
        more = f" and {len(records.columns) - 20} more" if len(records.columns) > 20 else ""
        raise InputFileError(
            f"the header has no 'text' column (columns: {shown}{more}); name the ticket text column 'text'",
            source=source,
            line=1,
        )
    return _rows(records, source)


def _rows(records: Records, source: str) -> Iterator[Row]:
    warned = records.columns is not None
    if records.columns is not None and _uses_deprecated(records.columns):
        _warn_deprecated(source, 1)
    for record in records:
        fields = record.fields
        if not warned and fields is not None and "images" in fields and _uses_deprecated(fields):
            _warn_deprecated(source, record.line)
            warned = True
        yield to_row(record)


def _uses_deprecated(names: Iterable[str]) -> bool:
    lowered = {k.strip().lower() for k in names}
    return "images" in lowered and "attachments" not in lowered


def _warn_deprecated(source: str, line: int) -> None:
    log.warning(
        "deprecated_input_name",
        source=display_name(source),
        line=line,
        name="images",
        use="attachments",
        hint="rename the 'images' column or key to 'attachments'; 'images' will stop being read",
    )


def _split(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ticket fields, the rest)`` of a row, empty values dropped from the rest.

    Ticket field names match case-insensitively, an exact lower-case name winning over a
    variant (which then counts as the rest); ``images`` stands for ``attachments`` when
    there is no ``attachments``.
    """
    named: dict[str, Any] = {}
    keys: dict[str, str] = {}
    other: dict[str, Any] = {}
    alias: tuple[str, Any] | None = None
    for key, value in fields.items():
        name = key if key in _FIELD_SET else key.strip().lower()
        if name in _FIELD_SET and (name not in keys or key == name):
            if name in keys and _present(named[name]):
                other[keys[name]] = named[name]
            keys[name] = key
            named[name] = value
        elif name in DEPRECATED_NAMES and alias is None:
            alias = (key, value)
        elif _present(value):
            other[key] = value
    if alias is not None:
        if "attachments" not in named:
            named["attachments"] = alias[1]
        elif _present(alias[1]):
            other[alias[0]] = alias[1]
    return named, other


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _id_problem(given: Any) -> str | None:
    if isinstance(given, bool) or not isinstance(given, str | int):
        return "'id' must be a string or an integer"
    if len(str(given)) > MAX_ID_CHARS:
        return f"'id' is longer than {MAX_ID_CHARS} characters"
    if not str(given).isprintable():
        return "'id' contains control or unprintable characters"
    return None


def _unusable(record: Record, ticket_id: str | None, reason: str | None, kind: str | None) -> Row:
    raw = record.raw_bytes()
    return Row(record.line, ticket_id or line_id(record.line, raw), None, reason, kind, raw)


def to_row(record: Record) -> Row:
    """The :class:`Row` for ``record``: a validated ticket, or the reason there is none."""
    if record.fields is None:
        return _unusable(record, None, record.problem, record.kind)
    named, other = _split(record.fields)
    given = named.get("id")
    ticket_id: str | None = None
    if _present(given) and not (isinstance(given, str) and not given.strip()):
        problem = _id_problem(given)
        if problem is not None:
            return _unusable(record, None, problem, "bad_id")
        ticket_id = str(given)
    text = named.get("text")
    if not _present(text):
        return _unusable(record, ticket_id, "the ticket has no 'text'", "missing_text")
    if not isinstance(text, str) or is_blank(text):
        return _unusable(record, ticket_id, "the ticket has a blank or non-string 'text'", "missing_text")
    values: dict[str, Any] = {"id": ticket_id or "-", "text": text}
    if _present(named.get("subject")):
        values["subject"] = named["subject"]
    try:
        metadata = _json_field(named.get("metadata"), "metadata", dict)
        if other or metadata:
            values["metadata"] = {**other, **metadata}
        if _present(named.get("thread_id")):
            values["thread_id"] = named["thread_id"]
        messages = _json_field(named.get("messages"), "messages", list)
        if messages:
            values["messages"] = messages
        values["attachments"] = parse_attachments(named.get("attachments"))
        ticket = Ticket.model_validate(values)
    except (ValidationError, ValueError) as exc:
        return _unusable(record, ticket_id, f"invalid ticket: {_first_error(exc)}", "invalid_ticket")
    raw = record.raw or b""
    if ticket_id is not None:
        return Row(record.line, ticket_id, ticket, raw=raw)
    ticket.id = content_id(ticket)
    return Row(record.line, ticket.id, ticket, raw=raw, derived=True)


def to_ticket(row: Row) -> Ticket:
    """The row's ticket; raises :class:`RowError` (``line <N>: ...``) when it has none."""
    if row.ticket is None:
        raise RowError(row.error or f"line {row.line}: unusable row", row.kind or "invalid_ticket")
    return row.ticket


def _first_error(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "ticket"
        return f"{where}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc)


def _json_field(value: Any, name: str, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    """A column holding a JSON object (``metadata``) or array (``messages``): given as such in
    JSONL, or as JSON text in a CSV cell; empty is ``{}`` or ``[]``."""
    if not _present(value):
        return kind()
    noun = "a JSON object" if kind is dict else "a JSON array"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"'{name}' must be {noun}") from None
    if not isinstance(value, kind):
        raise ValueError(f"'{name}' must be {noun}")
    return value


def parse_attachments(value: Any) -> list[Attachment]:
    """Attachments from a row's value: a list of sources or objects, or text (a JSON list, or ``|``-separated).

    A source is a path, an http(s) URL or a data URL (see :meth:`Attachment.image`).
    """
    if not _present(value) or value == []:
        return []
    if isinstance(value, str):
        cell = value.strip()
        if cell.startswith("["):
            try:
                value = json.loads(cell)
            except json.JSONDecodeError:
                raise ValueError("attachments: the cell starts with '[' but is not a JSON list") from None
        else:
            value = [part.strip() for part in cell.split("|") if part.strip()]
    if not isinstance(value, list):
        raise ValueError("attachments: expected a list of paths, URLs or {'path'|'url': ...} objects")
    out = []
    for item in value:
        if isinstance(item, str) and item.strip():
            out.append(Attachment.image(item.strip()))
        elif isinstance(item, dict):
            out.append(Attachment.model_validate(item))
        else:
            raise ValueError("attachments: each item must be a path, a URL or an object")
    return out


def count_rows(source: str, fmt: Format) -> int | None:
    """A quick row count for progress (newlines, less the header); ``None`` for standard input.

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
    return lines if fmt == "jsonl" else max(0, lines - 1)


async def stream_rows(rows: Iterator[T], chunk: int = 256) -> AsyncIterator[T]:
    """``rows`` read in a worker thread, ``chunk`` at a time, so a slow pipe never blocks the loop."""
    while True:
        batch = await asyncio.to_thread(lambda: list(islice(rows, chunk)))
        if not batch:
            return
        for row in batch:
            yield row
