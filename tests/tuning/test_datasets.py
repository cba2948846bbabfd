from __future__ import annotations

import json
from pathlib import Path

import pytest

from triagegate.tuning.datasets import DatasetError, LabeledText, iter_labeled, label_counts, load_labeled, split
from triagegate.errors import InputError


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
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"text,label\n\xff\xfe,A\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_labeled(binary)
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
