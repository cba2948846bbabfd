"""The one input reader: formats, row rules, content-derived ids, binary input and safe messages."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from triagegate.errors import InputError
from triagegate.inputs import (
    InputFileError,
    Row,
    RowError,
    content_id,
    count_rows,
    line_id,
    open_input,
    printable,
    read_rows,
    resolve_format,
    stream_rows,
    to_ticket,
)
from triagegate.types import Ticket


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows_of(path: Path, fmt: str = "auto") -> list[Row]:
    with open_input(str(path)) as stream:
        return list(read_rows(stream, resolve_format(str(path), fmt, stream), source=str(path)))


def rows_of_bytes(data: bytes, fmt: str = "auto", *, sniff: bool = True) -> list[Row]:
    stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    chosen = resolve_format("-", fmt, stream) if sniff else fmt
    return list(read_rows(stream, chosen))  # type: ignore[arg-type]


def is_clean(text: str) -> bool:
    """No control characters or undecodable bytes: safe to print on a terminal."""
    return text.isprintable()


# -- tickets from JSONL and CSV ---------------------------------------------------------------


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
    assert third.id == content_id(third) and third.id.startswith("auto-")


def test_attachments_follow_one_rule_in_every_format(tmp_path: Path) -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    jsonl = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "list", "text": "x", "attachments": ["pic.png", data_url]},
            {"id": "one", "text": "x", "attachments": "pic.png"},
            {"id": "piped", "text": "x", "attachments": f"pic.png|{data_url}"},
            {"id": "json-text", "text": "x", "attachments": json.dumps([{"url": data_url}])},
        ],
    )
    csv_path = write_csv(
        tmp_path / "in.csv",
        ["id", "text", "attachments"],
        [["piped", "x", f"pic.png | {data_url}"], ["json-text", "x", json.dumps([{"url": data_url}])]],
    )
    seen = {
        r.id: [a.describe() for a in to_ticket(r).attachments] for r in rows_of(jsonl) + rows_of(csv_path)
    }
    assert seen == {
        "list": ["pic.png", "data: URL"],
        "one": ["pic.png"],
        "piped": ["pic.png", "data: URL"],
        "json-text": ["data: URL"],
    }


def test_the_old_images_column_is_read_as_attachments_with_a_warning(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv", ["id", "text", "images"], [["a", "x", "p.png|q.png"], ["b", "y", ""]]
    )
    with capture_logs() as logs:
        rows = rows_of(path)
    assert [a.describe() for a in to_ticket(rows[0]).attachments] == ["p.png", "q.png"]
    assert to_ticket(rows[0]).metadata == {}
    assert [e["event"] for e in logs] == ["deprecated_input_name"]
    assert logs[0]["use"] == "attachments"


def test_csv_rows_with_header_extra_columns_and_multiline_cells(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        ["ID", "Text", "subject", "attachments", "region"],
        [
            ["c1", "first line\nsecond line", "", "", "eu"],
            ["", "no id here", "subj", "https://e.com/a.png|https://e.com/b.png", ""],
            ["c3", "", "", "", ""],
            ["c4", "too", "many", "", "", "fields"],
            ["c5", "json list", "", json.dumps([{"url": "https://e.com/c.png"}]), "", ""],
        ],
    )
    rows = rows_of(path)
    assert [r.line for r in rows] == [2, 4, 5, 6, 7]
    first = to_ticket(rows[0])
    assert (first.id, first.text, first.metadata) == ("c1", "first line\nsecond line", {"region": "eu"})
    second = to_ticket(rows[1])
    assert second.id == content_id(second) and rows[1].derived
    assert second.subject == "subj"
    assert len(second.attachments) == 2
    with pytest.raises(RowError) as missing:
        to_ticket(rows[2])
    assert missing.value.kind == "missing_text"
    assert rows[3].kind == "bad_csv_row", "a non-empty cell past the header is refused"
    assert [a.describe() for a in to_ticket(rows[4]).attachments] == ["https://e.com/c.png"], (
        "empty cells past the header (trailing commas) are ignored"
    )


def test_tsv_is_read_by_the_same_rules(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.tsv", ["id", "text", "plan"], [["t1", "a, b and c", "pro"]], "\t")
    (row,) = rows_of(path)
    assert (row.id, to_ticket(row).text, to_ticket(row).metadata) == ("t1", "a, b and c", {"plan": "pro"})


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
        b'{"id": "esc\\u001b[31m", "text": "x"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = rows_of(path)
    kinds = []
    for row in rows[1:]:
        with pytest.raises(RowError) as caught:
            to_ticket(row)
        assert str(caught.value).startswith(f"line {row.line}: ")
        assert is_clean(str(caught.value))
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
        "bad_id",
    ]
    assert [r.id for r in rows[5:9]] == ["nt", "blank", "meta", "att"], "a bad row keeps a usable id"
    assert rows[1].id == line_id(2, b"{not json")
    assert to_ticket(rows[0]).text == "fine"


def test_blank_lines_are_skipped_but_line_numbers_stay_physical(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n\n   \n{"id": "b", "text": "y"}\n', encoding="utf-8")
    assert [(r.id, r.line) for r in rows_of(path)] == [("a", 1), ("b", 4)]


def test_invalid_utf8_in_one_csv_row_fails_only_that_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text\na,fine\nb,caf\xe9\nc,also fine\n")
    rows = rows_of(path)
    assert [(r.line, r.kind) for r in rows] == [(2, None), (3, "invalid_utf8"), (4, None)]
    assert rows[1].reason is not None and is_clean(rows[1].reason)


# -- ids --------------------------------------------------------------------------------------


def test_content_ids_are_stable_and_ignore_the_line_and_the_format(tmp_path: Path) -> None:
    jsonl = write_jsonl(
        tmp_path / "in.jsonl",
        [{"text": "charged twice", "subject": "Billing", "plan": "pro"}, {"text": "another"}],
    )
    moved = write_jsonl(
        tmp_path / "moved.jsonl",
        [{"text": "first now"}, {"text": "charged twice\r\n", "subject": " Billing", "plan": "pro"}],
    )
    csv_path = write_csv(
        tmp_path / "in.csv", ["text", "subject", "plan"], [["charged twice", "Billing", "pro"]]
    )
    once = [r.id for r in rows_of(jsonl)]
    assert once == [r.id for r in rows_of(jsonl)]
    assert rows_of(moved)[1].id == once[0], "the id does not depend on the line, line endings or padding"
    assert rows_of(csv_path)[0].id == once[0], "nor on the format"
    assert once[0] != once[1]


def test_identical_rows_share_an_id_and_rows_differing_in_metadata_do_not(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"text": "same", "customer": "a"},
            {"text": "same", "customer": "a"},
            {"text": "same", "customer": "b"},
            {"text": "same", "attachments": ["x.png"]},
        ],
    )
    ids = [r.id for r in rows_of(path)]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3


# -- formats, binary input, headers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [(b'{"text": "x"}\n', "jsonl"), (b'\n  "bare"\n', "jsonl"), (b"id,text\n1,x\n", "csv"), (b"", "jsonl")],
)
def test_standard_input_format_is_sniffed_without_consuming_it(head: bytes, expected: str) -> None:
    stream = io.BufferedReader(io.BytesIO(head))  # type: ignore[arg-type]
    assert resolve_format("-", "auto", stream) == expected
    assert stream.read() == head


def test_suffix_and_explicit_format_win_over_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "tickets.txt"
    path.write_text("text\nhello\n", encoding="utf-8")
    with open_input(str(path)) as stream:
        assert resolve_format(str(path), "auto", stream) == "csv"
        assert resolve_format(str(path), "jsonl", stream) == "jsonl"
        assert resolve_format(str(tmp_path / "t.tsv"), "auto", stream) == "tsv"
        with pytest.raises(InputError, match="unknown input format"):
            resolve_format(str(path), "xml", stream)


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"),
        (b"\x1f\x8b\x08\x00" + bytes(range(40)), "a gzip file"),
        (b"PK\x03\x04\x14\x00\x06\x00", "a ZIP archive"),
        ("text,label\n".encode("utf-16"), "UTF-16 text"),
        (b"id,text\n1,ab\x00cd\n", "a NUL byte"),
        (b"\x1b[31m\x07\x08\x01\x02\x03\x04\x05\x06\x0e\x0f" * 20, "control bytes"),
    ],
)
def test_binary_input_is_refused_naming_the_file_without_echoing_it(
    tmp_path: Path, data: bytes, said: str
) -> None:
    path = tmp_path / "tickets.csv"
    path.write_bytes(data)
    with open_input(str(path)) as stream, pytest.raises(InputFileError) as caught:
        resolve_format(str(path), "csv", stream)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and said in message
    assert is_clean(message)


def test_a_header_without_text_is_refused_at_once_with_the_columns_made_printable(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,bo\x1b[2Jdy,\xff\xfeodd\n1,x,y\n")
    with open_input(str(path)) as stream:
        fmt = resolve_format(str(path), "auto", stream)
        with pytest.raises(InputFileError) as caught:
            read_rows(stream, fmt, source=str(path))
    assert caught.value.line == 1
    assert "no 'text' column" in str(caught.value) or "not valid UTF-8" in str(caught.value)
    assert is_clean(str(caught.value))
    clean = tmp_path / "clean.csv"
    clean.write_bytes(b"id,bo\x1b[2Jdy\n1,x\n")
    with open_input(str(clean)) as stream, pytest.raises(InputFileError) as caught:
        read_rows(stream, "csv", source=str(clean))
    assert "'bo\\x1b[2Jdy'" in str(caught.value) and is_clean(str(caught.value))


def test_missing_input_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="file not found"):
        open_input(str(tmp_path / "absent.jsonl"))
    with pytest.raises(InputFileError, match="is a directory"):
        open_input(str(tmp_path))


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


# -- properties -------------------------------------------------------------------------------

RESERVED = {"id", "text", "subject", "attachments", "metadata", "images"}
cell_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), whitelist_characters='\n\t,"|[{'),
    min_size=1,
    max_size=40,
)
ticket_text = cell_text.filter(lambda s: bool(s.strip()))
column = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda s: s not in RESERVED
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=ticket_text,
    subject=st.one_of(st.none(), ticket_text),
    metadata=st.dictionaries(column, ticket_text, max_size=3),
    explicit_id=st.one_of(st.none(), st.text(alphabet="abcXYZ019-_", min_size=1, max_size=12)),
)
def test_a_ticket_reads_the_same_from_jsonl_and_csv(
    tmp_path: Path, text: str, subject: str | None, metadata: dict[str, str], explicit_id: str | None
) -> None:
    record: dict[str, str] = {"text": text, **metadata}
    if subject is not None:
        record["subject"] = subject
    if explicit_id is not None:
        record["id"] = explicit_id
    jsonl = rows_of_bytes((json.dumps(record) + "\n").encode())
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(list(record))
    writer.writerow(list(record.values()))
    from_csv = rows_of_bytes(buffer.getvalue().encode(), "csv")
    assert len(jsonl) == len(from_csv) == 1
    a, b = to_ticket(jsonl[0]), to_ticket(from_csv[0])
    assert a == b
    assert (a.text, a.subject, a.metadata) == (text, subject, metadata)
    assert a.id == (explicit_id if explicit_id is not None else content_id(a))


@settings(max_examples=80)
@given(lines=st.lists(st.binary(max_size=60), max_size=8))
def test_any_bytes_become_rows_or_reasons_never_exceptions_or_raw_bytes(lines: list[bytes]) -> None:
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    for row in rows_of_bytes(data, "jsonl", sniff=False):
        assert (row.ticket is None) == (row.reason is not None)
        assert row.id and is_clean(row.id)
        if row.reason is not None:
            assert is_clean(row.reason)


@settings(max_examples=80)
@given(data=st.binary(max_size=200))
def test_any_csv_bytes_give_rows_or_one_clean_input_error(data: bytes) -> None:
    try:
        rows = rows_of_bytes(b"text,id\n" + data, "csv")
    except InputFileError as exc:
        assert is_clean(str(exc))
        return
    for row in rows:
        assert row.id and is_clean(row.id)
        if row.reason is not None:
            assert is_clean(row.reason)


@given(text=st.text(max_size=100))
def test_printable_never_lets_a_control_character_through(text: str) -> None:
    assert is_clean(printable(text, 200))


@pytest.mark.parametrize("text", [" \t\n", "\x1c", "\x1f\x85", "\ufeff", "\u3000\u00a0"])
def test_text_blank_in_either_regex_dialect_is_refused_everywhere(text: str) -> None:
    """White space by JSON Schema's ``\\s`` (U+FEFF) or Python's (U+001C-U+001F, U+0085) is blank
    for the Ticket model, the input reader and the API document's pattern alike."""
    from triagegate.types import TEXT_PATTERN, is_blank

    assert is_blank(text)
    assert re.search(TEXT_PATTERN, text) is None
    with pytest.raises(ValidationError, match="blank"):
        Ticket(text=text)
    assert not is_blank(text + "x")
    Ticket(text=text + "x")


def test_thread_columns_reach_the_ticket_and_its_id(tmp_path: Path) -> None:
    turns = [{"role": "customer", "content": "Where is my card?"}, {"role": "agent", "content": "Posted."}]
    path = tmp_path / "threads.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "thread_id", "messages"])
        writer.writerow(["Still nothing.", "T-1", json.dumps(turns)])
        writer.writerow(["Still nothing.", "", ""])
        writer.writerow(["Still nothing.", "", "not json"])
    threaded, plain, bad = rows_of(path)
    ticket = to_ticket(threaded)
    assert ticket.thread_id == "T-1"
    assert [(t.role, t.content) for t in ticket.messages] == [(t["role"], t["content"]) for t in turns]
    assert to_ticket(plain).thread_id is None and to_ticket(plain).messages == []
    assert threaded.id != plain.id, "the thread is part of an id-less ticket's content"
    assert plain.id == content_id(Ticket(text="Still nothing."))
    assert bad.ticket is None and bad.error is not None and "'messages' must be a JSON array" in bad.error
