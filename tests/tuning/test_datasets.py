from __future__ import annotations

import json
from pathlib import Path

import pytest

from triagegate.errors import InputError
from triagegate.tuning.datasets import (
    DatasetError,
    LabeledText,
    iter_labeled,
    label_counts,
    load_labeled,
    load_unlabeled,
    split,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_default_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", 'instruction,category,other\n"hello, there",A,x\nbye,B,y\n')
    rows = load_labeled(f)
    assert [(r.text, r.label, r.line) for r in rows] == [("hello, there", "A", 2), ("bye", "B", 3)]


def test_text_column_preferred_over_instruction(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "instruction,text,label\nI1,T1,A\nI2,T2,B\n")
    assert [r.text for r in load_labeled(f)] == ["T1", "T2"]


def test_jsonl_and_named_columns(tmp_path: Path) -> None:
    lines = [{"body": "one", "tag": "x"}, {"body": "two", "tag": "y"}]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = load_labeled(f, text_col="body", label_col="tag")
    assert [(r.text, r.label, r.line) for r in rows] == [("one", "x", 1), ("two", "y", 2)]


def test_tsv_and_sniffed_jsonl(tmp_path: Path) -> None:
    tsv = write(tmp_path / "d.tsv", "text\tlabel\na\tA\nb\tB\n")
    assert len(load_labeled(tsv)) == 2
    sniffed = write(tmp_path / "d.txt", '{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n')
    assert [r.label for r in load_labeled(sniffed)] == ["1", "2"]


def test_missing_column_lists_available(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "message,kind\nhi,A\n")
    with pytest.raises(DatasetError) as err:
        load_labeled(f)
    assert (
        str(f) in str(err.value) and "'message', 'kind'" in str(err.value) and "--text-col" in str(err.value)
    )
    with pytest.raises(DatasetError, match="no label column 'nope'"):
        load_labeled(f, text_col="message", label_col="nope")


def test_jsonl_row_missing_key_names_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": "A"}\n{"text": "b"}\n')
    with pytest.raises(DatasetError) as err:
        load_labeled(f)
    assert err.value.line == 2 and f"{f}:2" in str(err.value)


def test_bad_json_names_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": "A"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: not valid JSON"):
        load_labeled(f)


def test_one_class_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,A\nb,A\n")
    with pytest.raises(DatasetError) as err:
        load_labeled(f)
    assert str(f) in str(err.value) and "1 class" in str(err.value)


def test_empty_and_header_only_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="empty"):
        load_labeled(write(tmp_path / "e.csv", ""))
    with pytest.raises(DatasetError, match="no rows"):
        load_labeled(write(tmp_path / "h.csv", "text,label\n"))
    with pytest.raises(DatasetError, match="not found"):
        load_labeled(tmp_path / "absent.csv")


def test_unreadable_and_blank_values(tmp_path: Path) -> None:
    latin1 = tmp_path / "b.csv"
    latin1.write_bytes(b"text,label\nok,A\n\xff\xfe,A\n")
    with pytest.raises(DatasetError, match=r"b\.csv:3: not valid UTF-8"):
        load_labeled(latin1)
    blank = write(tmp_path / "blank.csv", "text,label\na,A\n  ,B\n")
    with pytest.raises(DatasetError, match=r"blank\.csv:3: empty 'text'"):
        load_labeled(blank)


def test_dataset_error_is_an_input_error() -> None:
    assert issubclass(DatasetError, InputError)


def test_iter_is_lazy(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": "A"}\nnot json\n')
    rows = iter_labeled(f)
    assert next(rows).text == "a"
    with pytest.raises(DatasetError):
        next(rows)


def test_split_is_seeded_and_complete() -> None:
    rows = list(range(101))
    train, test = split(rows, 0.2, 13)
    assert (train, test) == split(rows, 0.2, 13)
    assert len(test) == 20 and sorted(train + test) == rows
    assert split(rows, 0.2, 14) != (train, test)
    assert len(split([1, 2], 0.01)[1]) == 1
    with pytest.raises(ValueError):
        split(rows, 1.0)


def test_label_counts_most_frequent_first() -> None:
    rows = [
        LabeledText("a", "B", 2),
        LabeledText("b", "A", 3),
        LabeledText("c", "B", 4),
        LabeledText("d", "C", 5),
    ]
    assert list(label_counts(rows).items()) == [("B", 2), ("A", 1), ("C", 1)]


def test_a_binary_file_is_refused_by_name_without_echoing_its_bytes(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes(b"PK\x03\x04\x14\x00\x1b[2J" + bytes(range(32)))
    with pytest.raises(DatasetError) as err:
        load_labeled(f)
    assert str(err.value).startswith(f"{f}: this is a ZIP archive")
    assert str(err.value).isprintable()


def test_rows_follow_the_shared_reader_rules(tmp_path: Path) -> None:
    """Multi-line records start where they start; trailing empty cells are ignored; a BOM is fine."""
    f = tmp_path / "d.csv"
    f.write_bytes(b'\xef\xbb\xbftext,label\n"two\nlines",A,,\nthree,B\n')
    assert [(r.text, r.label, r.line) for r in load_labeled(f)] == [("two\nlines", "A", 2), ("three", "B", 4)]
    extra = write(tmp_path / "x.csv", "text,label\na,A,surprise\n")
    with pytest.raises(DatasetError, match=r"x\.csv:2: the row has 3 fields but the header has 2"):
        load_labeled(extra)


def test_load_unlabeled_reads_texts_without_a_label_column(tmp_path: Path) -> None:
    f = write(tmp_path / "u.csv", "id,instruction,notes\n1,first,x\n2,second,y\n")
    assert [(r.text, r.label, r.line) for r in load_unlabeled(f)] == [("first", "", 2), ("second", "", 3)]
    j = write(tmp_path / "u.jsonl", '{"body": "one"}\n"a bare string has no body"\n')
    with pytest.raises(DatasetError, match=r"u\.jsonl:2: missing 'body'"):
        load_unlabeled(j, text_col="body")
    with pytest.raises(DatasetError, match="no text column"):
        load_unlabeled(write(tmp_path / "n.csv", "id,notes\n1,x\n"))
    with pytest.raises(DatasetError, match="no rows"):
        load_unlabeled(write(tmp_path / "h.csv", "text\n"))
