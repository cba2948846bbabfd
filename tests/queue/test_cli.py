"""The queue commands as a user runs them: enqueue, worker, queue status, db migrate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.queue.conftest import LOOPBACK
from tests.support.openai_server import OpenAIServer
from triagegate.inputs import content_id
from triagegate.types import Ticket

CLI = str(Path(sys.executable).with_name("triagegate"))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_enqueue_skips_bad_rows_and_says_where(tmp_path: Path, redis_url: str, stream_name: str) -> None:
    source = tmp_path / "tickets.jsonl"
    source.write_text(
        '{"id": "a", "text": "charged twice"}\n\n{"id": "b"}\nnot json\n{"text": "no id given"}\n'
    )
    done = run("enqueue", str(LOOPBACK), str(source), "--redis", redis_url, "--stream", stream_name)
    assert done.returncode == 1, "bad rows make the exit status 1"
    assert f"{source}:3: the ticket has no 'text'" in done.stderr
    assert f"{source}:4: not valid JSON" in done.stderr
    assert "pushed 2 tickets" in done.stdout and "2 bad rows skipped" in done.stdout
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(stream_name)
    client.close()
    tickets = [json.loads(fields["ticket"]) for _, fields in entries]
    assert tickets[0]["id"] == "a"
    assert tickets[1]["id"] == content_id(Ticket(text="no id given")), (
        "an id-less ticket is named by its content, so redelivery and re-enqueueing map to one row"
    )


def test_enqueue_csv_with_poison_keeps_every_row(tmp_path: Path, redis_url: str, stream_name: str) -> None:
    source = tmp_path / "tickets.csv"
    source.write_text('id,text,subject,plan\nc1,"Charged twice, again",Billing,pro\nc2,,Empty,free\n')
    done = run(
        "enqueue",
        str(LOOPBACK),
        str(source),
        "--redis",
        redis_url,
        "--stream",
        stream_name,
        "--poison",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stream": stream_name, "pushed": 1, "skipped": 0, "poison": 1}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    (_, good), (_, bad) = client.xrange(stream_name)
    client.close()
    ticket = json.loads(good["ticket"])
    assert (ticket["id"], ticket["subject"], ticket["metadata"]) == ("c1", "Billing", {"plan": "pro"})
    assert "text" in bad["reason"] and '"c2"' in bad["poison"]


def test_db_migrate_is_idempotent(database: str) -> None:
    first = run("db", "migrate", "--results", database)
    assert first.returncode == 0 and "applied migrations 1" in first.stdout
    second = run("db", "migrate", "--results", database)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM outcomes").fetchone() == (0,)


def test_unreachable_services_fail_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "hi"}\n')
    done = run("enqueue", str(LOOPBACK), str(source), "--redis", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in done.stderr
    migrate = run("db", "migrate", "--results", "postgresql://postgres:hunter2secret@127.0.0.1:1/x")
    assert migrate.returncode == 1
    assert "cannot use PostgreSQL" in migrate.stderr and "hunter2secret" not in migrate.stderr


@pytest.mark.slow
def test_worker_drains_the_stream_and_status_shows_it(
    tmp_path: Path, redis_url: str, stream_name: str, database: str
) -> None:
    source = tmp_path / "tickets.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"w-{n}", "text": f"charged twice #{n}"}) + "\n" for n in range(30))
    )
    assert (
        run("enqueue", str(LOOPBACK), str(source), "--redis", redis_url, "--stream", stream_name).returncode
        == 0
    )
    with OpenAIServer(record=False) as server:
        env = {"TRIAGEGATE_MINI_BASE_URL": server.base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url}
        common = ["--redis", redis_url, "--stream", stream_name, "--group", "g"]
        done = run(
            "worker",
            str(LOOPBACK),
            *common,
            "--results",
            database,
            "--consumer",
            "solo",
            "--exit-when-idle",
            "1",
            env=env,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("READY solo")
    assert "processed 30 (0 failed outcomes), 0 dead-lettered" in done.stderr
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT ticket_id) FROM outcomes").fetchone() == (30, 30)
    status = run("queue", "status", *common, "--json")
    report = json.loads(status.stdout)
    assert (report["length"], report["lag"], report["pending"], report["dead_letters"]) == (30, 0, 0, 0)
    assert [c["processed"] for c in report["consumers"] if c["name"] == "solo"] == [30]
    table = run("queue", "status", *common)
    assert "lag 0, pending 0, dead letters 0" in table.stdout
