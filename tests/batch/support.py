"""Helpers for batch tests: inputs, running the CLI as a real process, checking outputs and ledgers."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GRAPH = REPO / "tests" / "graphs" / "openai_batch.yaml"
CLI = "import sys; from triagegate.cli import main; sys.exit(main())"
ESCALATE = "ESCALATE"
"""Tickets whose text contains this get a low-confidence triage from the server, so they escalate."""


def ticket_rows(count: int, *, escalate_every: int | None = None, prefix: str = "t") -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        text = f"Ticket {i}: I was charged twice for order {i}."
        if escalate_every and i % escalate_every == 0:
            text += f" {ESCALATE}"
        rows.append({"id": f"{prefix}{i}", "text": text})
    return rows


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def confidence_by_text(body: dict[str, Any]) -> float:
    """Server knob: low option-code confidence for tickets marked :data:`ESCALATE`."""
    messages = body.get("messages") or []
    last = messages[-1].get("content") if messages else ""
    return 0.3 if isinstance(last, str) and ESCALATE in last else 0.95


def batch_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGEGATE_")}
    env.update(
        TRIAGEGATE_MINI_BASE_URL=base_url,
        TRIAGEGATE_FLAGSHIP_BASE_URL=base_url,
        TRIAGEGATE_LOG_LEVEL="ERROR",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli_args(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", CLI, "batch", str(GRAPH), *(str(a) for a in args)]


def run_cli(
    *args: str | Path, env: Mapping[str, str], stdin: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cli_args(*args),
        env=dict(env),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    return result


def start_cli(*args: str | Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_args(*args),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for(condition: Callable[[], bool], *, timeout: float = 120, what: str = "condition") -> None:
    """Poll ``condition`` (a deadline only guards against hanging; nothing is asserted about time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def line_count(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def assert_exactly_once(path: Path, expected_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Every expected id has exactly one line, and there is nothing else."""
    outcomes = read_outcomes(path)
    counts = Counter(o["ticket_id"] for o in outcomes)
    repeated = {k: v for k, v in counts.items() if v > 1}
    assert not repeated, f"ids written more than once: {dict(list(repeated.items())[:5])}"
    expected = set(expected_ids)
    assert set(counts) == expected, (
        f"missing {sorted(expected - set(counts))[:5]}, unexpected {sorted(set(counts) - expected)[:5]}"
    )
    return outcomes


def ledger_path(output: Path) -> Path:
    return output.with_name(output.name + ".ledger.sqlite")


def ledger_state(output: Path) -> tuple[int, set[str]]:
    """``(committed_bytes, recorded ticket ids)`` straight from the SQLite ledger."""
    with sqlite3.connect(ledger_path(output)) as db:
        committed = int(db.execute("SELECT value FROM meta WHERE key = 'committed_bytes'").fetchone()[0])
        ids = {str(r[0]) for r in db.execute("SELECT id FROM tickets")}
    return committed, ids


def assert_committed_prefix_matches_ledger(output: Path) -> int:
    """The invariant after any crash: the committed prefix holds exactly the recorded tickets."""
    committed, ids = ledger_state(output)
    data = output.read_bytes()[:committed]
    lines = data.splitlines()
    assert data == b"" or data.endswith(b"\n")
    written = Counter(json.loads(line)["ticket_id"] for line in lines)
    assert all(v == 1 for v in written.values())
    assert set(written) == ids
    return len(ids)


def interrupt(process: subprocess.Popen[str], signum: int = signal.SIGINT) -> None:
    process.send_signal(signum)
