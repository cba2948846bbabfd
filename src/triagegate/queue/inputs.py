"""Reading tickets to enqueue from JSONL or CSV, one row at a time, each row judged on its own.

JSONL: one JSON object per line with Ticket fields (``id``, ``text``, ``subject``,
``attachments``, ``metadata``). CSV: a header row; ``id``, ``text`` and ``subject``
columns map to those fields, ``images`` holds image paths or URLs separated by ``|``,
and any other column goes into ``metadata``. A row that cannot become a ticket is
yielded as a :class:`BadRow` with its line number, never raised, so one bad row does
not stop the rest.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pydantic_core

from triagegate.errors import InputError
from triagegate.pipeline import as_ticket, check_limits
from triagegate.spec import Limits
from triagegate.types import Attachment, Ticket

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True, slots=True)
class GoodRow:
    line: int
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    raw: str
    reason: str


Row = GoodRow | BadRow


def guess_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputError(
        f"cannot tell the format of {path} from its extension; pass --format jsonl or --format csv"
    )


def _ticket(fields: Any, limits: Limits | None) -> Ticket:
    ticket = as_ticket(fields)
    if limits is not None:
        check_limits(ticket, limits)
    return ticket


def _jsonl_rows(stream: TextIO, limits: Limits | None) -> Iterator[Row]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = pydantic_core.from_json(line)
        except ValueError as exc:
            yield BadRow(number, line.rstrip("\n"), f"not valid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            yield BadRow(number, line.rstrip("\n"), "a row must be a JSON object")
            continue
        try:
            yield GoodRow(number, _ticket(value, limits))
        except InputError as exc:
            yield BadRow(number, line.rstrip("\n"), str(exc))


def _csv_rows(stream: TextIO, limits: Limits | None) -> Iterator[Row]:
    reader = csv.DictReader(stream)
    for record in reader:
        number = reader.line_num
        raw = json.dumps(record, ensure_ascii=False)
        if None in record:
            yield BadRow(number, raw, "row has more cells than the header")
            continue
        fields: dict[str, Any] = {"metadata": {}}
        for column, value in record.items():
            value = value or ""
            if column in ("id", "text", "subject"):
                if value != "":
                    fields[column] = value
            elif column == "images":
                fields["attachments"] = [Attachment.image(v.strip()) for v in value.split("|") if v.strip()]
            elif value != "":
                fields["metadata"][column] = value
        try:
            yield GoodRow(number, _ticket(fields, limits))
        except (InputError, ValueError) as exc:
            yield BadRow(number, raw, str(exc))


def read_rows(path: str, fmt: str | None = None, limits: Limits | None = None) -> Iterator[Row]:
    """Rows of ``path`` (``-`` is standard input, which needs ``fmt``), checked against ``limits``."""
    if path == "-":
        if fmt is None:
            raise InputError("reading standard input needs --format jsonl or --format csv")
        yield from (_jsonl_rows if fmt == "jsonl" else _csv_rows)(sys.stdin, limits)
        return
    chosen = fmt or guess_format(Path(path))
    if chosen not in FORMATS:
        raise InputError(f"unknown format {chosen!r}; use jsonl or csv")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            yield from (_jsonl_rows if chosen == "jsonl" else _csv_rows)(handle, limits)
    except FileNotFoundError:
        raise InputError(f"input file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"input file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
