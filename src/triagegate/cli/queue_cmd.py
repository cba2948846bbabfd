"""``triagegate enqueue | worker | queue status | db migrate``: scale-out processing (``queue`` extra).

Bad input rows at enqueue time are reported on stderr with their line number and
skipped, and the command exits 1 so scripts notice; ``--poison`` pushes them instead,
as entries that workers move straight to the dead-letter stream ``<stream>:dead``, for
pipelines that must keep every row on record.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from triagegate import environment
from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt, LogLevelOpt, setup_logging

queue_app = typer.Typer(help="Inspect the ticket queue.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the outcomes database.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(db_app, name="db")

RedisOpt = Annotated[
    str,
    typer.Option("--redis", envvar=environment.REDIS_URL, help=f"Redis URL (env {environment.REDIS_URL})."),
]
StreamOpt = Annotated[str, typer.Option("--stream", help="Redis stream holding the tickets.")]
GroupOpt = Annotated[str, typer.Option("--group", help="Consumer group of the workers.")]
ResultsOpt = Annotated[
    str,
    typer.Option(
        "--results",
        envvar=environment.RESULTS_DSN,
        help="PostgreSQL URL for outcomes, e.g. postgresql://user@host/db (env TRIAGEGATE_RESULTS_DSN).",
    ),
]
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _safe_url(url: str) -> str:
    """``url`` without a password, for error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def _service_errors(redis_url: str | None = None, results: str | None = None) -> Iterator[None]:
    """Turn an unreachable Redis or PostgreSQL into one clear line and exit code 1."""
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from triagegate.errors import TriagegateError

    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise TriagegateError(f"cannot reach Redis at {_safe_url(redis_url or '?')}: {exc}") from None
    except (OperationalError, PoolTimeout) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TriagegateError(f"cannot use PostgreSQL at {_safe_url(results or '?')}: {first}") from None


def _need_extra() -> None:
    try:
        import psycopg  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        from triagegate.errors import ConfigError

        raise ConfigError(
            f"queue commands need the 'queue' extra ({exc}); pip install 'triagegate[queue]'"
        ) from None


@app.command()
def enqueue(
    graph: GraphArg,
    input_path: Annotated[
        str, typer.Argument(metavar="INPUT", help="JSONL or CSV file of tickets, or - for stdin.")
    ],
    redis_url: RedisOpt = DEFAULT_REDIS,
    stream: StreamOpt = "triagegate:tickets",
    fmt: Annotated[
        str, typer.Option("--format", help="auto (by suffix, else sniffed), jsonl, csv or tsv.")
    ] = "auto",
    poison: Annotated[
        bool,
        typer.Option(
            "--poison",
            help="Push bad rows as poison entries (dead-lettered by workers) instead of skipping them.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    log_level: LogLevelOpt = None,
) -> None:
    """Validate tickets from INPUT against GRAPH's limits and push them onto the stream.

    INPUT is read exactly as 'triagegate batch' reads it. A ticket without an id is named by
    its content, the same id batch gives it, so enqueueing a file again updates the same
    rows in PostgreSQL instead of adding new ones.
    """
    import asyncio
    import json

    from triagegate.errors import InputError
    from triagegate.inputs import display_name, open_input, read_rows, resolve_format
    from triagegate.pipeline import check_limits
    from triagegate.queue.redis_stream import TicketStream, connect
    from triagegate.spec import load_spec
    from triagegate.types import Ticket

    setup_logging(log_level)
    _need_extra()
    limits = load_spec(graph).spec.limits
    source = open_input(input_path)
    where = display_name(input_path)
    try:
        rows = read_rows(source, resolve_format(input_path, fmt, source), source=input_path)
    except InputError:
        if input_path != "-":
            source.close()
        raise

    async def go() -> tuple[int, int, int]:
        client = connect(redis_url)
        target = TicketStream(client, stream)
        pushed = skipped = poisoned = 0
        chunk: list[Ticket] = []
        try:
            for row in rows:
                reason = row.reason
                if row.ticket is not None:
                    try:
                        check_limits(row.ticket, limits)
                        chunk.append(row.ticket)
                    except InputError as exc:
                        reason = str(exc)
                if reason is None:
                    if len(chunk) >= 500:
                        pushed += len(await target.add_tickets(chunk))
                        chunk = []
                    continue
                print(f"{where}:{row.line}: {reason}", file=sys.stderr)
                if poison:
                    if chunk:  # keep the stream in input order
                        pushed += len(await target.add_tickets(chunk))
                        chunk = []
                    await target.add_poison(row.raw_text(), f"line {row.line}: {reason}")
                    poisoned += 1
                else:
                    skipped += 1
            if chunk:
                pushed += len(await target.add_tickets(chunk))
        finally:
            await client.aclose()
        return pushed, skipped, poisoned

    try:
        with _service_errors(redis_url):
            pushed, skipped, poisoned = asyncio.run(go())
    finally:
        if input_path != "-":
            source.close()
    if as_json:
        typer.echo(json.dumps({"stream": stream, "pushed": pushed, "skipped": skipped, "poison": poisoned}))
    else:
        typer.echo(
            f"pushed {pushed} tickets to {stream}; {skipped} bad rows skipped, {poisoned} pushed as poison"
        )
    if skipped:
        raise typer.Exit(1)


@app.command()
def worker(
    graph: GraphArg,
    results: ResultsOpt,
    redis_url: RedisOpt = DEFAULT_REDIS,
    stream: StreamOpt = "triagegate:tickets",
    group: GroupOpt = "triagegate",
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name (default: host-pid, unique per process).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Tickets processed at once by this worker.")] = 8,
    claim_idle: Annotated[
        float, typer.Option(help="Seconds an entry may sit unacknowledged before live workers reclaim it.")
    ] = 60.0,
    max_deliveries: Annotated[
        int, typer.Option(help="Deliveries before an entry goes to <stream>:dead.")
    ] = 5,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="Exit after this many seconds with nothing to do (drain and exit).")
    ] = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(
            "--checkpoints",
            help="Where handoffs are kept (default: TRIAGEGATE_CHECKPOINTS, else the --results database, "
            "shared by the whole fleet).",
        ),
    ] = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Consume tickets from the stream's consumer group, run them through GRAPH, upsert outcomes into
    PostgreSQL and acknowledge each entry only after its row is committed. Resume entries
    (triagegate handoff resume --redis) finish a handoff with a person's answer.

    Applies database migrations at start. Prints 'READY <consumer>' once consuming. SIGTERM
    or SIGINT stops reading, finishes and acknowledges in-flight tickets, and exits 0.
    """
    import asyncio
    import signal

    from triagegate.pipeline import load
    from triagegate.queue.redis_stream import TicketStream, connect
    from triagegate.queue.worker import Worker, WorkerSettings, default_consumer
    from triagegate.store.postgres import OutcomeStore

    setup_logging(log_level)
    _need_extra()
    try:
        settings = WorkerSettings(
            consumer=consumer or default_consumer(),
            concurrency=concurrency,
            claim_idle_s=claim_idle,
            max_deliveries=max_deliveries,
            exit_when_idle_s=exit_when_idle,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    import os

    from triagegate import environment

    pipeline = load(
        Path(graph), checkpoints=checkpoints or os.environ.get(environment.CHECKPOINTS) or results
    )

    async def go() -> None:
        client = connect(redis_url)
        try:
            async with pipeline, OutcomeStore(results, max_connections=min(concurrency, 8)) as store:
                await store.migrate()
                runner = Worker(pipeline, TicketStream(client, stream, group), store, settings)
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, runner.stop)
                await runner.stream.ensure_group()  # READY only once Redis answered too
                print(f"READY {settings.consumer}", flush=True)
                stats = await runner.run()
                await runner.stream.forget_consumer(settings.consumer)
        finally:
            await client.aclose()
        print(
            f"worker {settings.consumer}: processed {stats.processed} ({stats.failed_outcomes} failed outcomes), "
            f"{stats.dead} dead-lettered, {stats.errors} errors left for retry, {stats.reclaimed} reclaimed",
            file=sys.stderr,
        )

    with _service_errors(redis_url, results):
        asyncio.run(go())


@queue_app.command("status")
def status(
    redis_url: RedisOpt = DEFAULT_REDIS,
    stream: StreamOpt = "triagegate:tickets",
    group: GroupOpt = "triagegate",
    as_json: JsonOpt = False,
) -> None:
    """Show the stream's lag, pending entries, dead letters and throughput per consumer."""
    import asyncio

    from triagegate.queue.redis_stream import TicketStream, connect
    from triagegate.queue.status import queue_status, render

    _need_extra()

    async def go() -> str:
        client = connect(redis_url)
        try:
            report = await queue_status(TicketStream(client, stream, group))
        finally:
            await client.aclose()
        return report.model_dump_json(indent=2) if as_json else render(report)

    with _service_errors(redis_url):
        typer.echo(asyncio.run(go()))


@db_app.command("migrate")
def migrate(results: ResultsOpt) -> None:
    """Create or upgrade the outcomes schema (idempotent; workers also do this at start)."""
    import asyncio

    from triagegate.store.postgres import MIGRATIONS, migrate_dsn

    _need_extra()
    with _service_errors(results=results):
        applied = asyncio.run(migrate_dsn(results))
    latest = MIGRATIONS[-1][0]
    if applied:
        typer.echo(f"applied migrations {', '.join(map(str, applied))}; schema is at version {latest}")
    else:
        typer.echo(f"schema already at version {latest}; nothing to do")
