"""The output-plus-ledger protocol on real files and a real SQLite ledger, including crash states."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.batch.support import assert_committed_prefix_matches_ledger, read_outcomes
from triagegate.batch.ledger import Ledger, LedgerError
from triagegate.batch.runner import BatchOptions, open_ledger
from triagegate.batch.sink import OutcomeSink, OutputStateError
from triagegate.errors import ConfigError
from triagegate.types import Outcome

HASH = "0123456789abcdef"


def outcome(ticket_id: str, status: str = "ok", cost: float = 0.001) -> Outcome:
    return Outcome(
        ticket_id=ticket_id,
        run_id=uuid.uuid4().hex[:12],
        graph_hash=HASH,
        status=status,
        route="mini" if status == "ok" else "none",
        cost_usd=cost,
    )


def open_sink(output: Path, **kwargs: float) -> OutcomeSink:
    ledger = Ledger(output.with_name(output.name + ".ledger.sqlite"))
    return OutcomeSink(output, ledger, graph_hash=HASH, **kwargs)  # type: ignore[arg-type]


def close(sink: OutcomeSink) -> None:
    sink.close()
    sink.ledger.close()


def test_committed_lines_are_recorded_with_the_output_length(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    for i in range(5):
        sink.write(outcome(f"t{i}"), line=i + 1)
    assert sink.pending_line("t3") == 4
    sink.commit()
    assert sink.pending_line("t3") is None
    entry = sink.ledger.lookup("t3")
    assert entry is not None
    assert (entry.line, entry.status) == (4, "ok")
    assert sink.ledger.committed_bytes == output.stat().st_size
    assert sink.ledger.spent_usd == pytest.approx(0.005)
    close(sink)
    assert assert_committed_prefix_matches_ledger(output) == 5


def test_commits_happen_every_n_lines(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output, commit_every=3)
    for i in range(7):
        sink.write(outcome(f"t{i}"), line=i + 1)
    assert sink.ledger.lookup("t5") is not None
    assert sink.ledger.lookup("t6") is None
    close(sink)


def test_lines_written_after_the_last_commit_and_a_torn_line_are_cut_on_reopen(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    sink.write(outcome("kept"), line=1)
    close(sink)
    committed = output.stat().st_size
    with output.open("ab") as handle:
        handle.write(outcome("uncommitted").model_dump_json().encode() + b"\n")
        handle.write(b'{"ticket_id": "torn", "run_')
    sink = open_sink(output)
    assert sink.discarded_bytes > 0
    assert output.stat().st_size == committed
    sink.write(outcome("next"), line=3)
    close(sink)
    assert [o["ticket_id"] for o in read_outcomes(output)] == ["kept", "next"]
    assert_committed_prefix_matches_ledger(output)


def test_an_output_shorter_than_the_ledger_records_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    sink.write(outcome("a"), line=1)
    close(sink)
    output.write_bytes(b"")
    with pytest.raises(OutputStateError, match="truncated or replaced"):
        open_sink(output)


def test_compaction_drops_superseded_lines(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    first = outcome("x", status="failed")
    sink.write(first, line=1)
    sink.write(outcome("y"), line=2)
    sink.commit()
    retried = outcome("x")
    sink.write(retried, line=1, supersedes=first.run_id)
    sink.commit()
    assert len(read_outcomes(output)) == 3
    assert sink.compact() == 1
    sink.write(outcome("z"), line=3)
    close(sink)
    lines = read_outcomes(output)
    assert [(o["ticket_id"], o["run_id"]) for o in lines] == [
        ("y", lines[0]["run_id"]),
        ("x", retried.run_id),
        ("z", lines[2]["run_id"]),
    ]
    assert_committed_prefix_matches_ledger(output)
    ledger = Ledger(output.with_name(output.name + ".ledger.sqlite"), readonly=True)
    assert ledger.superseded_run_ids() == set()
    entry = ledger.lookup("x")
    assert entry is not None
    assert (entry.status, entry.run_id) == ("ok", retried.run_id)
    ledger.close()


def test_a_compaction_interrupted_after_the_ledger_switched_is_finished_on_open(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    old = outcome("x", status="failed")
    sink.write(old, line=1)
    sink.write(outcome("x"), line=1, supersedes=old.run_id)
    close(sink)
    compacted = b"".join(
        line + b"\n" for line in output.read_bytes().splitlines() if json.loads(line)["run_id"] != old.run_id
    )
    (tmp_path / "out.jsonl.compacting").write_bytes(compacted)
    ledger = Ledger(output.with_name(output.name + ".ledger.sqlite"))
    ledger.begin_swap(len(compacted))
    ledger.close()

    sink = open_sink(output)
    assert output.read_bytes() == compacted
    assert not (tmp_path / "out.jsonl.compacting").exists()
    assert not sink.ledger.swap_pending
    close(sink)
    assert_committed_prefix_matches_ledger(output)


def test_a_compaction_interrupted_before_the_ledger_switched_is_rolled_back(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    sink.write(outcome("a"), line=1)
    close(sink)
    before = output.read_bytes()
    (tmp_path / "out.jsonl.compacting").write_bytes(b"half a copy")
    sink = open_sink(output)
    assert output.read_bytes() == before
    assert not (tmp_path / "out.jsonl.compacting").exists()
    close(sink)


def test_a_second_writer_cannot_open_the_same_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    first = Ledger(path)
    with pytest.raises(LedgerError, match="another batch"):
        Ledger(path)
    first.close()
    Ledger(path).close()


def test_an_existing_output_without_a_ledger_is_not_touched(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text("someone else's data\n", encoding="utf-8")
    with pytest.raises(OutputStateError, match="has no ledger"):
        open_ledger(BatchOptions(input="in.jsonl", output=output), HASH)
    assert output.read_text(encoding="utf-8") == "someone else's data\n"


def test_a_different_graph_hash_is_refused_unless_allowed(tmp_path: Path) -> None:
    options = BatchOptions(input="in.jsonl", output=tmp_path / "out.jsonl")
    sink = OutcomeSink(options.output, open_ledger(options, HASH), graph_hash=HASH)
    sink.write(outcome("a"), 1)
    close(sink)
    with pytest.raises(ConfigError, match="--allow-graph-change"):
        open_ledger(options, "fedcba9876543210")
    allowed = BatchOptions(input="in.jsonl", output=tmp_path / "out.jsonl", allow_graph_change=True)
    ledger = open_ledger(allowed, "fedcba9876543210")
    assert ledger.graph_hash == "fedcba9876543210"
    ledger.close()


def test_state_path_can_live_elsewhere(tmp_path: Path) -> None:
    state = tmp_path / "state" / "mine.sqlite"
    options = BatchOptions(input="in.jsonl", output=tmp_path / "out" / "o.jsonl", state=state)
    open_ledger(options, HASH).close()
    assert state.exists()
    assert (tmp_path / "out").is_dir()


def test_a_ledger_with_nothing_recorded_does_not_bind_the_graph_hash(tmp_path: Path) -> None:
    """A run that stopped before writing (a configuration error) must not refuse the corrected one."""
    options = BatchOptions(input="in.jsonl", output=tmp_path / "out.jsonl")
    open_ledger(options, HASH).close()
    ledger = open_ledger(options, "fedcba9876543210")
    assert ledger.graph_hash == "fedcba9876543210"
    ledger.close()


def test_a_ledger_that_named_rows_by_line_number_is_refused(tmp_path: Path) -> None:
    """Ledgers from before content ids: resuming one would run its id-less rows a second time."""
    output = tmp_path / "out.jsonl"
    sink = open_sink(output)
    sink.write(outcome("line3-0123456789ab"), 3)
    close(sink)
    path = output.with_name(output.name + ".ledger.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE key = 'row_ids'")
    with pytest.raises(LedgerError, match="older triagegate"):
        Ledger(path)
    fine = tmp_path / "fine.jsonl"
    sink = open_sink(fine)
    sink.write(outcome("T-1"), 1)
    close(sink)
    fine_path = fine.with_name(fine.name + ".ledger.sqlite")
    with sqlite3.connect(fine_path) as db:
        db.execute("DELETE FROM meta WHERE key = 'row_ids'")
    Ledger(fine_path).close()
    adopted = Ledger(fine_path, readonly=True)
    assert adopted.meta("row_ids") == "content", "a ledger without line-named rows is adopted"
    adopted.close()
