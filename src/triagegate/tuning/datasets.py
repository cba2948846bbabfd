"""Labeled ticket text from CSV, TSV or JSONL files, and the seeded split that train and eval share.

Files are read by :mod:`triagegate.inputs`, the reader ``batch`` and ``enqueue`` use, so
formats, encodings and line numbers follow the same rules. Rows stream from disk, so a
large file is read once and never held twice. Every problem is reported as a :class:`DatasetError` that names the file and, where it applies, the line,
so a user can open the file at the right place: a missing column lists the columns that
are there, an empty file or a file with a single class says so before any training starts.

``train`` and ``eval`` both use :func:`split` with the same fraction and seed, so
``triagegate eval --split 0.2 --seed 13`` tests on exactly the rows that
``triagegate train --split 0.2 --seed 13`` held out.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from triagegate.errors import InputError
from triagegate.inputs import InputFileError, open_input, quoted, read_records, resolve_format

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


class MissingColumn(DatasetError):
    """The file has no text (or no label) column; ``kind`` says which, so a caller can fall back."""

    def __init__(self, kind: str, message: str, *, file: str | Path) -> None:
        super().__init__(message, file=file, line=1)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LabeledText:
    text: str
    label: str
    line: int
    """1-based line in the source file where the row starts (for error messages and tracing)."""


def _pick(
    kind: str, wanted: str | None, defaults: Sequence[str], available: Sequence[str], path: Path
) -> str:
    shown = ", ".join(quoted(c) for c in available[:30]) or "none"
    if len(available) > 30:
        shown += f" and {len(available) - 30} more"
    if wanted is not None:
        if wanted not in available:
            raise MissingColumn(kind, f"no {kind} column {quoted(wanted)}; the file has: {shown}", file=path)
        return wanted
    found = next((c for c in defaults if c in available), None)
    if found is None:
        tried = ", ".join(repr(c) for c in defaults)
        flag = "--text-col" if kind == "text" else "--label-col"
        raise MissingColumn(
            kind,
            f"no {kind} column (looked for {tried}); the file has: {shown}. Name it with {flag}",
            file=path,
        )
    return found


def _text(path: Path, line: int, text: Any, text_col: str) -> str:
    if text is None or (isinstance(text, str) and not text.strip()):
        raise DatasetError(f"empty {text_col!r}", file=path, line=line)
    if not isinstance(text, str):
        raise DatasetError(f"{text_col!r} is not a string", file=path, line=line)
    return text


def _label(path: Path, line: int, label: Any, label_col: str) -> str:
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DatasetError(f"empty {label_col!r}", file=path, line=line)
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise DatasetError(f"{label_col!r} must be a string or an integer", file=path, line=line)
    return str(label).strip()


def _records(
    path: Path, text_col: str | None, label_col: str | None, *, labeled: bool
) -> Iterator[LabeledText]:
    """Rows of ``path`` through :mod:`triagegate.inputs`; the first bad row raises :class:`DatasetError`."""
    try:
        stream = open_input(str(path))
    except InputFileError as exc:
        raise DatasetError(exc.reason, file=path) from None
    with stream:
        try:
            fmt = resolve_format(str(path), "auto", stream)
            records = read_records(stream, fmt, source=str(path))
        except InputFileError as exc:
            raise DatasetError(exc.reason, file=path, line=exc.line) from None
        columns: tuple[str, str | None] | None = None
        if records.columns is not None:
            columns = _columns(path, records.columns, text_col, label_col, labeled)
        elif fmt != "jsonl":
            raise DatasetError("the file is empty", file=path)
        empty = True
        for record in records:
            empty = False
            fields = record.fields
            if fields is None:
                raise DatasetError(record.problem or "unreadable row", file=path, line=record.line)
            if columns is None:
                columns = _columns(path, list(fields), text_col, label_col, labeled)
            tcol, lcol = columns
            missing = [c for c in (tcol, lcol) if c is not None and c not in fields]
            if missing:
                if records.columns is not None:
                    problem = (
                        f"the row has {len(fields)} fields, fewer than the header's {len(records.columns)}"
                    )
                else:
                    shown = ", ".join(quoted(k) for k in list(fields)[:30]) or "none"
                    problem = f"missing {', '.join(map(repr, missing))}; this row has: {shown}"
                raise DatasetError(problem, file=path, line=record.line)
            text = _text(path, record.line, fields[tcol], tcol)
            label = "" if lcol is None else _label(path, record.line, fields[lcol], lcol)
            yield LabeledText(text=text, label=label, line=record.line)
        if empty and fmt == "jsonl":
            raise DatasetError("the file is empty", file=path)


def _columns(
    path: Path, available: Sequence[str], text_col: str | None, label_col: str | None, labeled: bool
) -> tuple[str, str | None]:
    text = _pick("text", text_col, TEXT_COLUMNS, available, path)
    label = _pick("label", label_col, LABEL_COLUMNS, available, path) if labeled else None
    return text, label


def iter_labeled(
    path: str | Path, *, text_col: str | None = None, label_col: str | None = None
) -> Iterator[LabeledText]:
    """Stream ``(text, label)`` rows from a CSV, TSV or JSONL file.

    Formats and parsing are :mod:`triagegate.inputs`' (the suffix, else the first bytes;
    binary files refused). Without ``text_col``/``label_col`` the first of
    :data:`TEXT_COLUMNS` / :data:`LABEL_COLUMNS` present is used (for JSONL, among the first
    row's keys). Raises :class:`DatasetError` naming the file and line of the first problem.
    """
    return _records(Path(path), text_col, label_col, labeled=True)


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


def load_unlabeled(path: str | Path, text_col: str | None = None) -> list[LabeledText]:
    """Ticket texts of a file that has no labels (each ``label`` is ``""``, for a reference to fill).

    The text column is ``text_col`` or the first of :data:`TEXT_COLUMNS` present; a file
    without rows is refused.
    """
    rows = list(_records(Path(path), text_col, None, labeled=False))
    if not rows:
        raise DatasetError("the file has a header but no rows", file=path)
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
