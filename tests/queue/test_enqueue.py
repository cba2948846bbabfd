"""``triagegate enqueue`` reads input exactly as ``batch`` does, on the real Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from tests.queue.conftest import LOOPBACK, QueueEnv, scripted_pipeline
from tests.queue.test_cli import run
from triagegate.inputs import open_input, read_rows
from triagegate.queue.worker import Worker, WorkerSettings


def enqueue(source: Path, env: QueueEnv, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "enqueue", str(LOOPBACK), str(source), "--redis", env.redis_url, "--stream", env.stream.stream, *extra
    )


async def drain(env: QueueEnv) -> None:
    settings = WorkerSettings(
        consumer="w1", concurrency=4, claim_idle_s=0.3, block_ms=100, stats_every_s=0.1, exit_when_idle_s=1.0
    )
    await Worker(scripted_pipeline(), env.stream, env.store, settings).run()


async def stream_tickets(env: QueueEnv) -> list[dict[str, object]]:
    entries = await env.redis.xrange(env.stream.stream)
    return [json.loads(fields["ticket"]) for _, fields in entries if "ticket" in fields]


async def test_enqueueing_the_same_id_less_file_twice_keeps_one_row_per_ticket(
    tmp_path: Path, queue_env: QueueEnv
) -> None:
    source = tmp_path / "tickets.csv"
    source.write_text(
        "text,customer\nI was charged twice,c-1\nWhere is my parcel?,c-2\nI was charged twice,c-3\n",
        encoding="utf-8",
    )
    for _ in range(2):
        done = enqueue(source, queue_env)
        assert done.returncode == 0, done.stderr
        assert "pushed 3 tickets" in done.stdout
        await drain(queue_env)
    with psycopg.connect(queue_env.dsn) as conn:
        ids = sorted(str(r[0]) for r in conn.execute("SELECT ticket_id FROM outcomes"))
        writes = conn.execute("SELECT sum(writes) FROM outcomes").fetchone()
    with open_input(str(source)) as stream:
        batch_ids = sorted(row.id for row in read_rows(stream, "csv"))
    assert ids == batch_ids, "one row per ticket, under the id batch gives the same row"
    assert len(ids) == 3
    assert writes == (6,), "the second enqueue updated the rows the first one wrote"


async def test_enqueue_accepts_the_string_attachments_batch_accepts(
    tmp_path: Path, queue_env: QueueEnv
) -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    source = tmp_path / "tickets.jsonl"
    source.write_text(
        "".join(
            json.dumps(row) + "\n"
            for row in [
                {"id": "path", "text": "see the screenshot", "attachments": ["shot.png"]},
                {"id": "data", "text": "see the screenshot", "attachments": [data_url]},
                {"id": "bare", "text": "see the screenshot", "attachments": "shot.png|https://e.com/a.png"},
            ]
        ),
        encoding="utf-8",
    )
    done = enqueue(source, queue_env, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pushed"] == 3
    tickets = {str(t["id"]): t["attachments"] for t in await stream_tickets(queue_env)}
    assert tickets == {
        "path": [{"kind": "image", "path": "shot.png", "url": None}],
        "data": [{"kind": "image", "path": None, "url": data_url}],
        "bare": [
            {"kind": "image", "path": "shot.png", "url": None},
            {"kind": "image", "path": None, "url": "https://e.com/a.png"},
        ],
    }


async def test_enqueue_refuses_a_binary_file_in_one_clean_line(tmp_path: Path, queue_env: QueueEnv) -> None:
    source = tmp_path / "tickets.csv"
    source.write_bytes(b"\x1b[2J" + bytes(range(256)))
    done = enqueue(source, queue_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {source}: binary data (a NUL byte at offset 4), not JSONL, CSV or TSV text"
    ]
    assert await queue_env.redis.xlen(queue_env.stream.stream) == 0
