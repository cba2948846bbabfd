"""``triagegate batch`` end to end: a real CLI process against the loopback OpenAI-compatible server.

Faults (429, 500, hangs) are injected by the server; crashes are real signals sent to the
batch process. Every test ends by checking the output holds each input row exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.batch.support import (
    ESCALATE,
    assert_committed_prefix_matches_ledger,
    assert_exactly_once,
    confidence_by_text,
    ledger_state,
    line_count,
    read_outcomes,
    run_cli,
    start_cli,
    ticket_rows,
    wait_for,
    write_csv,
    write_jsonl,
)
from tests.support.openai_server import OpenAIServer, Status
from triagegate.inputs import open_input, read_rows

pytestmark = pytest.mark.slow


def reached(output: Path, lines: int) -> bool:
    return line_count(output) >= lines


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def report_of(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def test_ten_thousand_tickets_with_injected_faults_each_end_with_exactly_one_outcome(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.fault_rate = 0.1
    server.faults = ("429", "500", "timeout")
    rows = ticket_rows(10_000, escalate_every=10)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    env = {**env, "TRIAGEGATE_MINI": '{"timeout": 1.0}', "TRIAGEGATE_FLAGSHIP": '{"timeout": 1.0}'}
    result = run_cli(
        source, "-o", output, "--concurrency", "64", "--report", tmp_path / "r.json", env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = assert_exactly_once(output, ids(rows))
    assert len(outcomes) == 10_000
    assert server.status_counts[429] > 0 and server.status_counts[500] > 0 and server.status_counts[499] > 0
    report = report_of(tmp_path / "r.json")
    run = report["run"]
    assert run["written"] == 10_000
    assert sum(run["by_status"].values()) == 10_000
    assert run["by_status"].get("failed", 0) <= 5
    assert run["by_route"]["flagship"] >= 1_000
    assert report["batch"]["rows"] == 10_000
    print(f"\n10k tickets with 10% faults: {run['elapsed_s']:.1f} s, {run['throughput_per_s']:.0f}/s")


def test_sigkill_at_any_point_then_rerun_yields_every_ticket_exactly_once(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.latency = 0.01
    server.fault_rate = 0.05
    server.faults = ("429", "500")
    rows = ticket_rows(1_500, escalate_every=7)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    args = (source, "-o", output, "--concurrency", "32")
    recorded = 0
    for stop_after in (150, 700):
        process = start_cli(*args, env=env)
        wait_for(partial(reached, output, stop_after), what=f"{stop_after} output lines")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        now = assert_committed_prefix_matches_ledger(output)
        assert now >= recorded
        recorded = now
    result = run_cli(*args, "--report", tmp_path / "r.json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly_once(output, ids(rows))
    run = report_of(tmp_path / "r.json")["run"]
    assert run["already_done"] == recorded
    assert run["written"] == len(rows) - recorded


def test_ctrl_c_finishes_tickets_in_flight_and_the_same_command_resumes(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.latency = 0.2
    rows = ticket_rows(400)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    args = (source, "-o", output, "--concurrency", "16")
    process = start_cli(*args, env=env)
    wait_for(lambda: line_count(output) >= 20, what="20 output lines")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopping: no new tickets" in stderr
    assert "To resume, run the same command again" in stderr
    committed, recorded = ledger_state(output)
    assert output.stat().st_size == committed, "tickets in flight were finished and committed"
    assert 20 <= len(recorded) < len(rows)
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly_once(output, ids(rows))


def test_a_second_ctrl_c_abandons_tickets_in_flight(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.latency = 30.0
    rows = ticket_rows(50)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    args = (source, "-o", output, "--concurrency", "8")
    env = {**env, "TRIAGEGATE_MINI": '{"timeout": 60}'}
    process = start_cli(*args, env=env)
    wait_for(lambda: server.in_flight >= 8, what="8 requests in flight")
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr[-2000:]
    assert "abandoning" in stderr
    assert line_count(output) == 0
    server.latency = 0.0
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly_once(output, ids(rows))


def test_bad_rows_of_each_kind_get_one_outcome_and_the_batch_goes_on(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text", encoding="utf-8")
    lines = [
        b'{"id": "good-1", "text": "Where is my parcel?"}',
        b"{not json at all",
        b'{"id": "latin1", "text": "caf\xe9"}',
        b"[1, 2, 3]",
        b'{"id": "no-text", "subject": "hello"}',
        b'{"id": "blank", "text": "    "}',
        b'{"id": "too-long", "text": "' + b"x" * 2_001 + b'"}',
        b'{"id": "no-image", "text": "see the picture", "attachments": ["/nonexistent/pic.png"]}',
        json.dumps({"id": "bad-image", "text": "see it", "attachments": [str(not_an_image)]}).encode(),
        b'{"id": "good-1", "text": "the same id again"}',
        b'{"id": {"nested": 1}, "text": "odd id"}',
        b'{"id": "good-2", "text": "I was charged twice."}',
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out.jsonl"
    result = run_cli(source, "-o", output, "--report", tmp_path / "r.json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = read_outcomes(output)
    assert len(outcomes) == len(lines)
    by_line: dict[int, dict[str, Any]] = {}
    for o in outcomes:
        if o["errors"] and o["errors"][0].startswith("line "):
            by_line[int(o["errors"][0].split(":")[0].removeprefix("line "))] = o
    by_id = {o["ticket_id"]: o for o in outcomes if o["status"] != "skipped"}
    assert by_id["good-1"]["status"] == by_id["good-2"]["status"] == "ok"
    assert "not valid JSON" in by_line[2]["errors"][0]
    assert "not valid UTF-8" in by_line[3]["errors"][0]
    assert "expected a JSON object or string" in by_line[4]["errors"][0]
    assert "has no 'text'" in by_id["no-text"]["errors"][0]
    assert "blank" in by_id["blank"]["errors"][0]
    assert "over the limit of 2000" in by_id["too-long"]["errors"][0]
    assert "not found" in by_id["no-image"]["errors"][0]
    assert "not a PNG, JPEG, GIF or WebP" in by_id["bad-image"]["errors"][0]
    duplicate = by_line[10]
    assert (duplicate["ticket_id"], duplicate["status"]) == ("good-1", "skipped")
    assert "duplicate id 'good-1' (first seen on line 1)" in duplicate["errors"][0]
    assert "'id' must be a string or an integer" in by_line[11]["errors"][0]
    failed = [o for o in outcomes if o["status"] == "failed"]
    assert len(failed) == 9
    assert all(o["route"] == "none" and o["graph"] == "openai-batch" for o in failed)
    kinds = report_of(tmp_path / "r.json")["run"]["failures"]["by_kind"]
    assert kinds == {
        "invalid_json": 1,
        "invalid_utf8": 1,
        "not_an_object": 1,
        "missing_text": 2,
        "text_too_long": 1,
        "image_error": 2,
        "duplicate_id": 1,
        "bad_id": 1,
    }
    again = run_cli(source, "-o", output, "--report", tmp_path / "r2.json", env=env)
    assert again.returncode == 0
    assert report_of(tmp_path / "r2.json")["run"]["written"] == 0
    assert len(read_outcomes(output)) == len(lines)


def test_the_rate_limit_is_honoured_at_the_server(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rpm = 300
    arrivals: list[float] = []

    def stamped(body: dict[str, Any]) -> float:
        arrivals.append(time.monotonic())
        return confidence_by_text(body)

    server.code_confidence = stamped
    rows = ticket_rows(1_000)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    process = start_cli(
        source,
        "-o",
        output,
        "--concurrency",
        "8",
        env={**env, "TRIAGEGATE_MINI": json.dumps({"requests_per_minute": rpm})},
    )
    wait_for(lambda: bool(arrivals), what="the first request")
    wait_for(lambda: time.monotonic() - arrivals[0] >= 10.0, what="ten seconds of traffic", timeout=60)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    seen = list(arrivals)
    span = seen[-1] - seen[0]
    per_second = rpm / 60
    # A leaky bucket may let a burst of up to one bucket through, never more than that plus the rate.
    assert len(seen) <= rpm + per_second * span + 1
    tail = [t for t in seen if t >= seen[-1] - 5.0]
    sustained = (len(tail) - 1) / (tail[-1] - tail[0])
    assert sustained <= per_second * 1.15, f"{sustained:.2f} requests/s against a limit of {per_second:.2f}"
    assert_committed_prefix_matches_ledger(output)


def test_the_budget_stops_the_batch_before_spending_more(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows = ticket_rows(400)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    args = (source, "-o", output, "--concurrency", "16", "--report", tmp_path / "r.json")
    result = run_cli(*args, "--max-cost", "0.01", env=env)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "stopped by --max-cost" in result.stderr
    report = report_of(tmp_path / "r.json")
    assert report["state"] == "budget"
    written = report["run"]["written"]
    assert 0 < written < len(rows)
    spent = sum(o["cost_usd"] for o in read_outcomes(output))
    assert spent <= 0.01
    assert report["batch"]["spent_usd"] == pytest.approx(spent)
    again = run_cli(*args, "--max-cost", "0.01", env=env)
    assert again.returncode == 3
    assert report_of(tmp_path / "r.json")["run"]["written"] <= 1
    final = run_cli(*args, "--max-cost", "1", env=env)
    assert final.returncode == 0, final.stderr[-2000:]
    assert_exactly_once(output, ids(rows))


def test_csv_and_jsonl_inputs_give_the_same_outcomes(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows = ticket_rows(60, escalate_every=5)
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{**r, "subject": "Order", "region": "eu"} for r in rows])
    csv_path = write_csv(
        tmp_path / "in.csv",
        ["id", "text", "subject", "region"],
        [[r["id"], r["text"], "Order", "eu"] for r in rows],
    )
    results = {}
    for source in (jsonl, csv_path):
        output = tmp_path / f"{source.suffix[1:]}.out.jsonl"
        result = run_cli(source, "-o", output, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outcomes = assert_exactly_once(output, ids(rows))
        results[source.suffix] = {o["ticket_id"]: (o["status"], o["route"], o["category"]) for o in outcomes}
    assert results[".jsonl"] == results[".csv"]
    assert sum(route == "flagship" for _, route, _ in results[".csv"].values()) == 12


def test_standard_input_jsonl_and_csv(server: OpenAIServer, env: dict[str, str], tmp_path: Path) -> None:
    rows = ticket_rows(30)
    jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
    csv_text = ("id,text\n" + "".join(f'{r["id"]},"{r["text"]}"\n' for r in rows)).encode()
    for name, payload in (("jsonl", jsonl), ("csv", csv_text)):
        output = tmp_path / f"{name}.jsonl"
        result = run_cli("-", "-o", output, env=env, stdin=payload)
        assert result.returncode == 0, result.stderr[-2000:]
        assert_exactly_once(output, ids(rows))
        again = run_cli("-", "-o", output, env=env, stdin=payload)
        assert again.returncode == 0
        assert line_count(output) == len(rows)


def test_dry_run_validates_and_estimates_without_calling_a_model(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows = [*ticket_rows(40), {"id": "empty", "text": ""}, {"id": "t1", "text": "duplicate"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    result = run_cli(
        source, "-o", output, "--dry-run", "--max-cost", "5", "--report", tmp_path / "d.json", env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dry run: 42 row(s) read; 40 would run, 2 rejected" in result.stdout
    assert server.count == 0
    assert not output.exists()
    report = report_of(tmp_path / "d.json")
    assert report["rows"]["by_kind"] == {"missing_text": 1, "duplicate_id": 1}
    estimate = report["estimate"]
    assert estimate["tickets"] == 40
    cost = estimate["cost_usd"]
    assert 0 < cost["no_escalation"] < cost["expected"] < cost["all_escalate"]
    assert estimate["tokens"]["mini_output_max"] == 40 * 300
    assert report["budget"]["fits"] is True

    assert run_cli(source, "-o", output, "--limit", "10", env=env).returncode == 0
    requests = server.count
    again = run_cli(source, "-o", output, "--dry-run", "--report", tmp_path / "d2.json", env=env)
    assert again.returncode == 0
    rows_report = report_of(tmp_path / "d2.json")["rows"]
    assert rows_report["already_done"] == 10
    assert rows_report["to_run"] == 30
    assert server.count == requests


def test_report_contents_and_retrying_failed_tickets(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.script("flagship-model", Status(400), Status(400))
    rows = ticket_rows(200, escalate_every=4)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    result = run_cli(source, "-o", output, "--concurrency", "8", "--report", tmp_path / "r.json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "escalation rate 25.0%" in result.stdout
    outcomes = assert_exactly_once(output, ids(rows))
    report = report_of(tmp_path / "r.json")
    run = report["run"]
    assert report["state"] == "finished"
    assert report["graph"]["name"] == "openai-batch"
    assert run["by_status"] == {"ok": 198, "failed": 2}
    assert run["by_route"] == {"mini": 150, "flagship": 50}
    assert run["escalation"] == {"rate": 0.25, "reasons": {"low_confidence": 50}}
    assert sum(run["by_category"].values()) == 200
    total = sum(o["cost_usd"] for o in outcomes)
    assert run["cost_usd"]["total"] == pytest.approx(total)
    assert run["cost_usd"]["per_1000_tickets"] == pytest.approx(total / 200 * 1000)
    assert run["tokens"]["input"] == sum(o["input_tokens"] for o in outcomes)
    latency = run["latency_ms"]
    assert latency["count"] == 200
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert run["throughput_per_s"] > 0
    assert run["failures"]["by_kind"] == {"flagship:ModelError": 2}
    assert {e["ticket_id"] for e in run["failures"]["examples"]} <= {
        r["id"] for r in rows if ESCALATE in r["text"]
    }
    assert report["batch"]["by_status"] == {"ok": 198, "failed": 2}

    retry = run_cli(source, "-o", output, "--retry-failed", "--report", tmp_path / "r2.json", env=env)
    assert retry.returncode == 0, retry.stderr[-2000:]
    second = report_of(tmp_path / "r2.json")
    assert second["run"]["written"] == 2
    assert second["run"]["already_done"] == 198
    assert second["superseded_lines_removed"] == 2
    outcomes = assert_exactly_once(output, ids(rows))
    assert all(o["status"] == "ok" for o in outcomes)
    assert second["batch"]["by_status"] == {"ok": 200}


def test_a_changed_graph_is_refused_until_allowed(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows = ticket_rows(20)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    assert run_cli(source, "-o", output, "--limit", "5", env=env).returncode == 0
    changed = {**env, "TRIAGEGATE_MINI_MODEL": "another-mini"}
    refused = run_cli(source, "-o", output, env=changed)
    assert refused.returncode == 2
    assert "--allow-graph-change" in refused.stderr
    allowed = run_cli(source, "-o", output, "--allow-graph-change", env=changed)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    outcomes = assert_exactly_once(output, ids(rows))
    assert len({o["graph_hash"] for o in outcomes}) == 2


def test_progress_lines_when_not_on_a_terminal(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.latency = 0.05
    rows = ticket_rows(120)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = run_cli(
        source, "-o", tmp_path / "out.jsonl", "--concurrency", "4", "--progress-interval", "0.2", env=env
    )
    assert result.returncode == 0
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert len(progress) >= 2
    assert progress[-1].startswith("progress: 120/120 rows")
    assert "escalated" in progress[-1] and "spent $" in progress[-1]


def test_rows_without_ids_are_named_by_content_so_repeats_run_once(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"text": "I was charged twice.", "customer": "c-1"},
            {"text": "Where is my parcel?"},
            {"text": "I was charged twice.", "customer": "c-1"},
            {"text": "I was charged twice.", "customer": "c-2"},
        ],
    )
    output = tmp_path / "out.jsonl"
    result = run_cli(source, "-o", output, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    with open_input(str(source)) as stream:
        expected = [row.id for row in read_rows(stream, "jsonl")]
    outcomes = read_outcomes(output)
    assert sorted(o["ticket_id"] for o in outcomes) == sorted(expected)
    skipped = next(o for o in outcomes if o["status"] == "skipped")
    assert skipped["ticket_id"] == expected[0] == expected[2]
    assert "line 3: the same ticket as line 1" in skipped["errors"][0]
    assert sum(o["status"] == "ok" for o in outcomes) == 3
    csv_source = write_csv(tmp_path / "in.csv", ["text", "customer"], [["Where is my parcel?", ""]])
    csv_out = tmp_path / "csv.jsonl"
    assert run_cli(csv_source, "-o", csv_out, env=env).returncode == 0
    assert [o["ticket_id"] for o in read_outcomes(csv_out)] == [expected[1]], "the same id from CSV"
    again = run_cli(source, "-o", output, "--report", tmp_path / "r.json", env=env)
    assert again.returncode == 0
    assert report_of(tmp_path / "r.json")["run"]["written"] == 0


def test_a_binary_input_is_refused_in_one_clean_line_and_nothing_is_created(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "tickets.csv"
    source.write_bytes(b"\x1b[2J\x1b]0;owned\x07" + bytes(range(256)) * 4)
    output = tmp_path / "out" / "outcomes.jsonl"
    result = run_cli(source, "-o", output, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: ")
    assert "not JSONL, CSV or TSV text" in lines[0]
    assert lines[0].isprintable(), "no raw bytes or escape sequences reach the terminal"
    assert not (tmp_path / "out").exists()
    assert server.count == 0


def test_a_configuration_error_before_writing_leaves_nothing_to_refuse_the_corrected_run(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    wrong = write_csv(tmp_path / "in.csv", ["id", "body"], [["a", "charged twice"]])
    output = tmp_path / "deep" / "er" / "out.jsonl"
    failed = run_cli(wrong, "-o", output, env=env)
    assert failed.returncode == 2
    assert "the header has no 'text' column (columns: 'id', 'body')" in failed.stderr
    assert not (tmp_path / "deep").exists(), "validation happens before any directory is made"
    fixed = write_csv(tmp_path / "in.csv", ["id", "text"], [["a", "charged twice"]])
    changed = {**env, "TRIAGEGATE_MINI_MODEL": "another-mini"}
    result = run_cli(fixed, "-o", output, env=changed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_exactly_once(output, ["a"])


def test_a_batch_where_no_ticket_succeeds_exits_4(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": " "}, {"id": "b"}, "not json"])
    output = tmp_path / "out.jsonl"
    result = run_cli(source, "-o", output, env=env)
    assert result.returncode == 4, result.stderr[-2000:]
    assert "no ticket succeeded: all 3 ticket(s) run failed" in result.stderr
    assert len(read_outcomes(output)) == 3
    again = run_cli(source, "-o", output, env=env)
    assert again.returncode == 0, "a resume that has nothing left to run is not a failure"
    retried = run_cli(source, "-o", output, "--retry-failed", env=env)
    assert retried.returncode == 4
