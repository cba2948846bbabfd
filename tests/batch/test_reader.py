"""Streaming input: JSONL, CSV and sniffed standard input, deterministic ids, and bad rows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.batch.support import write_csv, write_jsonl
from triagegate.batch.reader import (
    Row,
    RowError,
    count_rows,
    derived_id,
    open_input,
    read_rows,
    resolve_format,
    stream_rows,
    to_ticket,
)
from triagegate.errors import InputError


def rows_of(path: Path, fmt: str = "auto") -> list[Row]:
    with open_input(str(path)) as stream:
        return list(read_rows(stream, resolve_format(str(path), fmt, stream)))


def test_jsonl_rows_become_tickets_with_extra_keys_kept_as_metadata(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "text": "hello", "subject": "hi", "customer": "c-1", "metadata": {"plan": "pro"}},
            {"id": 7, "text": "numeric id", "attachments": ["https://example.com/x.png", {"path": "y.png"}]},
            json.dumps("a bare string is the text"),
        ],
    )
    first, second, third = (to_ticket(r) for r in rows_of(path))
    assert (first.id, first.subject, first.metadata) == ("a", "hi", {"customer": "c-1", "plan": "pro"})
    assert second.id == "7"
    assert [a.describe() for a in second.attachments] == ["https://example.com/x.png", "y.png"]
    assert third.text == "a bare string is the text"
    assert third.id.startswith("line3-")


def test_derived_ids_are_stable_and_depend_on_line_and_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "same"}, {"text": "same"}])
    once = [r.id for r in rows_of(path)]
    again = [r.id for r in rows_of(path)]
    assert once == again
    assert once[0] != once[1]
    assert once[0] == derived_id(1, b'{"text": "same"}')


def test_blank_lines_are_skipped_but_line_numbers_stay_physical(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n\n   \n{"id": "b", "text": "y"}\n', encoding="utf-8")
    assert [(r.id, r.line) for r in rows_of(path)] == [("a", 1), ("b", 4)]


def test_each_kind_of_bad_jsonl_row_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        b'{"id": "ok", "text": "fine"}',
        b"{not json",
        b'{"id": "u", "text": "caf\xe9"}',
        b"42",
        b'{"id": true, "text": "x"}',
        b'{"id": "nt"}',
        b'{"id": "blank", "text": "   "}',
        b'{"id": "meta", "text": "x", "metadata": [1]}',
        b'{"id": "att", "text": "x", "attachments": [{"path": "a", "url": "https://b"}]}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = rows_of(path)
    assert [r.kind for r in rows[:5]] == [None, "invalid_json", "invalid_utf8", "not_an_object", "bad_id"]
    kinds = []
    for row in rows[1:]:
        with pytest.raises(RowError) as caught:
            to_ticket(row)
        assert str(caught.value).startswith(f"line {row.line}: ")
        kinds.append(caught.value.kind)
    assert kinds == [
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "bad_id",
        "missing_text",
        "missing_text",
        "invalid_ticket",
        "invalid_ticket",
    ]
    assert to_ticket(rows[0]).text == "fine"


def test_csv_rows_with_header_extra_columns_and_multiline_cells(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        ["ID", "Text", "subject", "attachments", "region"],
        [
            ["c1", "first line\nsecond line", "", "", "eu"],
            ["", "no id here", "subj", "https://e.com/a.png|https://e.com/b.png", ""],
            ["c3", "", "", "", ""],
            ["c4", "too", "many", "", "", "fields"],
            ["c5", "json list", "", json.dumps([{"url": "https://e.com/c.png"}]), ""],
        ],
    )
    rows = rows_of(path)
    assert [r.line for r in rows] == [2, 4, 5, 6, 7]
    first = to_ticket(rows[0])
    assert (first.id, first.text, first.metadata) == ("c1", "first line\nsecond line", {"region": "eu"})
    second = to_ticket(rows[1])
    assert second.id.startswith("line4-")
    assert second.subject == "subj"
    assert len(second.attachments) == 2
    with pytest.raises(RowError) as missing:
        to_ticket(rows[2])
    assert missing.value.kind == "missing_text"
    assert rows[3].kind == "bad_csv_row"
    assert [a.describe() for a in to_ticket(rows[4]).attachments] == ["https://e.com/c.png"]


def test_csv_without_a_text_column_is_an_input_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", ["id", "body"], [["1", "x"]])
    with pytest.raises(InputError, match="no 'text' column"):
        rows_of(path)


@pytest.mark.parametrize(
    ("head", "expected"),
    [(b'{"text": "x"}\n', "jsonl"), (b'\n  "bare"\n', "jsonl"), (b"id,text\n1,x\n", "csv"), (b"", "jsonl")],
)
def test_standard_input_format_is_sniffed_without_consuming_it(head: bytes, expected: str) -> None:
    stream = io.BufferedReader(io.BytesIO(head))
    assert resolve_format("-", "auto", stream) == expected
    assert stream.read() == head


def test_suffix_and_explicit_format_win_over_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "tickets.txt"
    path.write_text("text\nhello\n", encoding="utf-8")
    with open_input(str(path)) as stream:
        assert resolve_format(str(path), "auto", stream) == "csv"
        assert resolve_format(str(path), "jsonl", stream) == "jsonl"
        with pytest.raises(InputError, match="unknown input format"):
            resolve_format(str(path), "xml", stream)


def test_missing_input_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input"):
        open_input(str(tmp_path / "absent.jsonl"))


def test_count_rows_counts_lines_quickly(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"text": str(i)} for i in range(5)])
    assert count_rows(str(jsonl), "jsonl") == 5
    unterminated = tmp_path / "u.jsonl"
    unterminated.write_bytes(b'{"text": "a"}\n{"text": "b"}')
    assert count_rows(str(unterminated), "jsonl") == 2
    csv_path = write_csv(tmp_path / "in.csv", ["text"], [["a"], ["b"]])
    assert count_rows(str(csv_path), "csv") == 2
    assert count_rows("-", "jsonl") is None


async def test_stream_rows_yields_everything_in_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": "x"} for i in range(600)])
    with open_input(str(path)) as stream:
        ids = [row.id async for row in stream_rows(read_rows(stream, "jsonl"), chunk=64)]
    assert ids == [f"r{i}" for i in range(600)]
