"""Labeled ticket text from CSV or JSONL files, and the seeded split that train and eval share.

Rows stream from disk, so a large file is read once and never held twice. Every problem is
reported as a :class:`DatasetError` that names the file and, where it applies, the line,
so a user can open the file at the right place: a missing column lists the columns that
are there, an empty file or a file with a single class says so before any training starts.

``train`` and ``eval`` both use :func:`split` with the same fraction and seed, so
``triagegate eval --split 0.2 --seed 13`` tests on exactly the rows that
``triagegate train --split 0.2 --seed 13`` held out.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from triagegate.errors import InputError

TEXT_COLUMNS = ("text", "instruction")
"""Tried in order when no text column is named."""
LABEL_COLUMNS = ("label", "category", "intent")
"""Tried in order when no label column is named."""
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 13

T = TypeVar("T")


class DatasetError(InputError):
    """A labeled data file cannot be used; the message names the file (and line)."""

    def __init__(self, message: str, *, file: str | Path, line: int | None = None) -> None:
        self.file = str(file)
        self.line = line
        self.reason = message
        where = self.file + (f":{line}" if line else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class LabeledText:
    text: str
    label: str
    line: int
    """1-based line in the source file where the row ends (for error messages and tracing)."""


def _file_format(path: Path, first_char: str) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if first_char == "{" else "csv"


def _pick(
    kind: str, wanted: str | None, defaults: Sequence[str], available: Sequence[str], path: Path
) -> str:
    shown = ", ".join(repr(c) for c in available) or "none"
    if wanted is not None:
        if wanted not in available:
            raise DatasetError(f"no {kind} column {wanted!r}; the file has: {shown}", file=path, line=1)
        return wanted
    found = next((c for c in defaults if c in available), None)
    if found is None:
        tried = ", ".join(repr(c) for c in defaults)
        flag = "--text-col" if kind == "text" else "--label-col"
        raise DatasetError(
            f"no {kind} column (looked for {tried}); the file has: {shown}. Name it with {flag}",
            file=path,
            line=1,
        )
    return found


def _row(path: Path, line: int, text: Any, label: Any, text_col: str, label_col: str) -> LabeledText:
    if text is None or (isinstance(text, str) and not text.strip()):
        raise DatasetError(f"empty {text_col!r}", file=path, line=line)
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DatasetError(f"empty {label_col!r}", file=path, line=line)
    if not isinstance(text, str):
        raise DatasetError(f"{text_col!r} is not a string", file=path, line=line)
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise DatasetError(f"{label_col!r} must be a string or an integer", file=path, line=line)
    return LabeledText(text=text, label=str(label).strip(), line=line)


def _csv_rows(
    path: Path, handle: Any, delimiter: str, text_col: str | None, label_col: str | None
) -> Iterator[LabeledText]:
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DatasetError(f"not valid CSV: {exc}", file=path, line=reader.line_num) from None
    if header is None:
        raise DatasetError("the file is empty", file=path)
    header = [h.strip() for h in header]
    tcol = _pick("text", text_col, TEXT_COLUMNS, header, path)
    lcol = _pick("label", label_col, LABEL_COLUMNS, header, path)
    ti, li = header.index(tcol), header.index(lcol)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"not valid CSV: {exc}", file=path, line=reader.line_num) from None
        if not record or all(not field.strip() for field in record):
            continue
        if len(record) <= max(ti, li):
            raise DatasetError(
                f"row has {len(record)} fields, fewer than the header's {len(header)}",
                file=path,
                line=reader.line_num,
            )
        yield _row(path, reader.line_num, record[ti], record[li], tcol, lcol)


def _jsonl_rows(
    path: Path, handle: Any, text_col: str | None, label_col: str | None
) -> Iterator[LabeledText]:
    columns: tuple[str, str] | None = None
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"not valid JSON ({exc.msg} at column {exc.colno})", file=path, line=line_no
            ) from None
        if not isinstance(obj, dict):
            raise DatasetError("each line must be a JSON object", file=path, line=line_no)
        if columns is None:
            keys = list(obj)
            columns = (
                _pick("text", text_col, TEXT_COLUMNS, keys, path),
                _pick("label", label_col, LABEL_COLUMNS, keys, path),
            )
        tcol, lcol = columns
        missing = [c for c in (tcol, lcol) if c not in obj]
        if missing:
            shown = ", ".join(repr(k) for k in obj) or "none"
            raise DatasetError(
                f"missing {', '.join(map(repr, missing))}; this row has: {shown}", file=path, line=line_no
            )
        yield _row(path, line_no, obj[tcol], obj[lcol], tcol, lcol)


def iter_labeled(
    path: str | Path, *, text_col: str | None = None, label_col: str | None = None
) -> Iterator[LabeledText]:
    """Stream ``(text, label)`` rows from a CSV, TSV or JSONL file.

    The format comes from the suffix (``.csv``, ``.tsv``, ``.jsonl``/``.ndjson``); any other
    suffix is read as JSONL when the file starts with ``{`` and as CSV otherwise. Without
    ``text_col``/``label_col`` the first of :data:`TEXT_COLUMNS` / :data:`LABEL_COLUMNS`
    present is used. Raises :class:`DatasetError` naming the file and line.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            first = handle.read(1)
            if not first:
                raise DatasetError("the file is empty", file=path)
            handle.seek(0)
            fmt = _file_format(path, first)
            if fmt == "jsonl":
                yield from _jsonl_rows(path, handle, text_col, label_col)
            else:
                yield from _csv_rows(path, handle, "\t" if fmt == "tsv" else ",", text_col, label_col)
    except FileNotFoundError:
        raise DatasetError("file not found", file=path) from None
    except IsADirectoryError:
        raise DatasetError("is a directory, not a data file", file=path) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None
    except OSError as exc:
        raise DatasetError(f"cannot read: {exc.strerror or exc}", file=path) from None


def load_labeled(
    path: str | Path, *, text_col: str | None = None, label_col: str | None = None, min_classes: int = 2
) -> list[LabeledText]:
    """Read every row of ``path``; refuse a file without rows or with fewer than ``min_classes`` labels."""
    rows = list(iter_labeled(path, text_col=text_col, label_col=label_col))
    if not rows:
        raise DatasetError("the file has a header but no rows", file=path)
    labels = Counter(r.label for r in rows)
    if len(labels) < min_classes:
        only = ", ".join(repr(label) for label in labels)
        raise DatasetError(
            f"found {len(labels)} class ({only}) in {len(rows)} rows; a classifier needs at least {min_classes}",
            file=path,
        )
    return rows


def label_counts(rows: Sequence[LabeledText]) -> dict[str, int]:
    """``{label: rows}``, most frequent first (ties by name), for summaries."""
    counts = Counter(r.label for r in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def split(
    rows: Sequence[T], test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[list[T], list[T]]:
    """Deterministically split ``rows`` into ``(train, test)``.

    The rows are shuffled with ``random.Random(seed)``; the last ``round(n * test_fraction)``
    (at least one, and leaving at least one for training) form the test part. The same
    inputs give the same split on every platform and Python version that keeps
    :class:`random.Random`'s documented reproducibility, which is what lets ``train`` and
    ``eval`` agree on the held-out rows without writing them anywhere.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if len(rows) < 2:
        raise ValueError(f"need at least 2 rows to split, got {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = min(len(rows) - 1, max(1, round(len(rows) * test_fraction)))
    cut = len(rows) - n_test
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]
