"""The batch runner as a Python API, in this process, against the loopback server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import triagegate
from tests.batch.support import GRAPH, assert_exactly_once, line_count, ticket_rows, write_jsonl
from tests.support.openai_server import OpenAIServer
from triagegate.batch import BatchOptions, BatchRunner


async def test_a_run_and_a_stop_requested_midway_then_a_resume(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    server.latency = 0.02
    rows = ticket_rows(120, escalate_every=6)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    options = BatchOptions(input=str(source), output=output, concurrency=4)

    async with triagegate.load(GRAPH, environ=env) as pipeline:
        runner = BatchRunner(pipeline, options)
        task = asyncio.create_task(runner.run())
        while runner.stats.written < 10:
            await asyncio.sleep(0.01)
        runner.request_stop()
        first = await task
    assert first.state == "interrupted"
    written = first.report["run"]["written"]
    assert 10 <= written < len(rows)
    assert line_count(output) == written

    async with triagegate.load(GRAPH, environ=env) as pipeline:
        second = await BatchRunner(pipeline, options).run()
    assert second.state == "finished"
    assert second.report["run"]["already_done"] == written
    assert (
        second.report["run"]["by_route"]["flagship"] + first.report["run"]["by_route"].get("flagship", 0)
        == 20
    )
    assert_exactly_once(output, [r["id"] for r in rows])


async def test_limit_stops_after_that_many_outcomes(
    server: OpenAIServer, env: dict[str, str], tmp_path: Path
) -> None:
    rows = ticket_rows(50)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    async with triagegate.load(GRAPH, environ=env) as pipeline:
        result = await BatchRunner(pipeline, BatchOptions(input=str(source), output=output, limit=7)).run()
    assert result.state == "limit"
    assert line_count(output) == 7
