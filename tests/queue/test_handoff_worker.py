"""Handoffs on the worker fleet: PostgreSQL checkpoints shared by two workers, resumes taken from the stream.

Real Redis, real PostgreSQL and the loopback OpenAI-compatible server: tickets pause on one
worker and are resumed by whichever worker reads the answer; two answers to the same handoff
race and exactly one wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import triagegate
from tests.queue.conftest import QueueEnv
from tests.support.openai_server import OpenAIServer
from triagegate.errors import HandoffResolved
from triagegate.pipeline import Pipeline
from triagegate.queue.worker import Worker, WorkerSettings
from triagegate.types import HumanAnswer, Ticket

HANDOFF = Path(__file__).resolve().parents[1] / "graphs" / "handoff_openai.yaml"


@pytest.fixture
def unsure_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(code_confidence=0.5) as server:
        yield server


def pipeline_on(server: OpenAIServer, dsn: str, tmp_path: Path) -> Pipeline:
    env = {"TRIAGEGATE_MINI_BASE_URL": server.base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url}
    return triagegate.load(HANDOFF, environ=env, checkpoints=dsn, cache_dir=tmp_path)


def settings(consumer: str) -> WorkerSettings:
    return WorkerSettings(
        consumer=consumer,
        concurrency=4,
        claim_idle_s=5,
        block_ms=100,
        stats_every_s=0.2,
        exit_when_idle_s=1.0,
    )


def outcome_rows(dsn: str) -> dict[str, tuple[str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute("SELECT ticket_id, status, route, outcome->>'answer' FROM outcomes")
        }


async def test_two_workers_pause_tickets_and_take_their_resumes_from_the_stream_one_winning_each_race(
    queue_env: QueueEnv, unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    tickets = [Ticket(id=f"q-{n}", text=f"charged twice, case {n}") for n in range(12)]
    await queue_env.stream.add_tickets(tickets)
    async with (
        pipeline_on(unsure_server, queue_env.dsn, tmp_path) as one,
        pipeline_on(unsure_server, queue_env.dsn, tmp_path) as two,
    ):
        workers = [
            Worker(one, queue_env.stream, queue_env.store, settings("w1")),
            Worker(two, queue_env.stream, queue_env.store, settings("w2")),
        ]
        stats = await asyncio.gather(*(w.run() for w in workers))
        assert sum(s.processed for s in stats) == 12
        assert all(s.processed > 0 for s in stats)
        assert {v[0] for v in outcome_rows(queue_env.dsn).values()} == {"awaiting_human"}
        pending = await one.handoffs(limit=100)
        assert sorted(r.thread_id for r in pending) == sorted(t.id for t in tickets)
        calls = unsure_server.count

        for ticket in tickets:
            await queue_env.stream.add_resume(
                ticket.id, HumanAnswer(action="answer", text=f"first {ticket.id}")
            )
            await queue_env.stream.add_resume(
                ticket.id, HumanAnswer(action="answer", text=f"second {ticket.id}")
            )
        stats = await asyncio.gather(*(w.run() for w in workers))
        assert sum(s.resumed for s in stats) == 12
        assert sum(s.resumes_refused for s in stats) == 12
        assert unsure_server.count == calls

        rows = outcome_rows(queue_env.dsn)
        assert {v[:2] for v in rows.values()} == {("ok", "human")}
        for ticket in tickets:
            record = await two.handoff(ticket.id)
            assert record.status == "resolved"
            assert record.outcome.answer == rows[ticket.id][2]
            assert rows[ticket.id][2] in (f"first {ticket.id}", f"second {ticket.id}")
        dead = await queue_env.redis.xrange(queue_env.stream.dead)
        assert len(dead) == 12
        assert all("resume refused" in fields["error"] for _, fields in dead)
        assert await one.handoffs() == []


async def test_of_two_resumes_racing_on_postgres_exactly_one_wins(
    database: str, unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    async with (
        pipeline_on(unsure_server, database, tmp_path) as one,
        pipeline_on(unsure_server, database, tmp_path) as two,
    ):
        for n in range(10):
            await one.run(Ticket(id=f"r-{n}", text="charged twice"))
        for n in range(10):
            results = await asyncio.gather(
                one.resume(f"r-{n}", "answer", "from one"),
                two.resume(f"r-{n}", "answer", "from two"),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], HandoffResolved)
            record = await two.handoff(f"r-{n}")
            assert record.status == "resolved" and record.outcome.answer == won[0].answer


async def test_a_redelivered_resume_finishes_its_own_claim_instead_of_being_refused(
    database: str, unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    async with pipeline_on(unsure_server, database, tmp_path) as pipeline:
        await pipeline.run(Ticket(id="d-1", text="charged twice"))
        first = await pipeline.resume("d-1", "answer", "done", claimer="entry-7")
        again = await pipeline.resume("d-1", "answer", "done", claimer="entry-7")
        assert again == first
        with pytest.raises(HandoffResolved):
            await pipeline.resume("d-1", "answer", "done", claimer="entry-8")
        rerun = await pipeline.run(Ticket(id="d-1", text="charged twice"))
        assert rerun.route == "human" and rerun.answer == "done"


def test_handoff_resume_with_redis_queues_the_answer_for_the_workers(
    redis_url: str, stream_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import redis

    from triagegate.cli import main

    args = ["handoff", "resume", str(HANDOFF), "T-1", "--redis", redis_url, "--stream", stream_name]
    assert main([*args, "--edit", "Sorted.", "--by", "kim"]) == 0
    assert json.loads(capsys.readouterr().out)["thread_id"] == "T-1"
    assert main([*args, "--edit", "  "]) == 2
    assert "needs the text" in capsys.readouterr().err
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        [(_, fields)] = client.xrange(stream_name)
    assert fields["resume"] == "T-1"
    assert HumanAnswer.model_validate_json(fields["answer"]) == HumanAnswer(
        action="edit", text="Sorted.", by="kim"
    )
