"""The Python API: load a graph file once, run tickets through it many times.

A :class:`Pipeline` owns its backends (and their HTTP connection pools) and holds no
global state, so several can live in one process and inside an existing asyncio app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog
from pydantic import ValidationError

from triagegate import environment
from triagegate.errors import InputError, TriagegateError
from triagegate.log import get_logger
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ImagePart, ModelBackend
from triagegate.prompts import Template, load_graph_templates
from triagegate.screening import flags_for
from triagegate.spec import Limits, LoadedSpec, load_spec
from triagegate.types import Outcome, Ticket, new_ticket_id

if TYPE_CHECKING:
    from triagegate.state import TicketState

log = get_logger("triagegate.pipeline")

TicketLike = Ticket | str | Mapping[str, Any]


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(environment.CACHE_DIR):
        return Path(env[environment.CACHE_DIR])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "triagegate"


def as_ticket(value: TicketLike) -> Ticket:
    """Coerce text or a mapping into a :class:`Ticket`, raising :class:`InputError` on bad input."""
    if isinstance(value, Ticket):
        return value
    try:
        if isinstance(value, str):
            return Ticket(text=value)
        if not isinstance(value, Mapping):
            raise InputError(f"invalid ticket: expected text or a mapping, got {type(value).__name__}")
        return Ticket.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "ticket"
        raise InputError(f"invalid ticket: {where}: {first['msg']}") from None


def check_limits(ticket: Ticket, limits: Limits) -> None:
    if len(ticket.text) > limits.max_text_chars:
        raise InputError(
            f"ticket {ticket.id}: text is {len(ticket.text)} characters, over the limit of {limits.max_text_chars} "
            "(raise limits.max_text_chars in the graph file to accept it)",
            code="text_too_long",
        )
    if len(ticket.attachments) > limits.max_images:
        raise InputError(
            f"ticket {ticket.id}: {len(ticket.attachments)} attachments, over the limit of {limits.max_images}",
            code="too_many_attachments",
        )


class Pipeline:
    """A compiled graph plus the backends it calls."""

    def __init__(
        self,
        loaded: LoadedSpec,
        *,
        environ: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
        extras: dict[str, Any] | None = None,
        record: str | Path | None = None,
    ) -> None:
        from triagegate.graph import Cascade, build_graph, build_outcome

        self.loaded = loaded
        self.spec = loaded.spec
        env = dict(os.environ if environ is None else environ)
        self.templates: dict[str, Template] = load_graph_templates(loaded)
        from triagegate import knowledge

        self.knowledge = knowledge.load_for(loaded)
        self.graph_hash = loaded.content_hash(
            {n: t.text for n, t in self.templates.items()} | knowledge.content_texts(self.knowledge)
        )
        self._context = BuildContext(
            loaded=loaded, environ=env, cache_dir=cache_dir or default_cache_dir(env), extras=extras or {}
        )
        self.backends: dict[str, ModelBackend] = build_backends(self._context, self.spec.aliases())
        if record is not None:
            from triagegate.models.recording import record_backends

            self.backends = record_backends(self.backends, record, bindings=self.spec.models, environ=env)
        from triagegate.state import RunContext

        self._run_context = RunContext(
            spec=self.spec,
            graph_name=self.spec.name,
            graph_hash=self.graph_hash,
            templates=self.templates,
            backends=self.backends,
            knowledge=self.knowledge,
        )
        capabilities = {alias: backend.capabilities for alias, backend in self.backends.items()}
        self._cascade = Cascade(self.spec, capabilities)
        self._outcome_of = build_outcome
        self.graph = build_graph(self.spec, capabilities)
        """The compiled LangGraph ``StateGraph`` (``graph.get_graph()`` draws it)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def describe_models(self) -> dict[str, str]:
        """``{alias: "backend model (endpoint)"}`` for the aliases this graph uses, for humans."""
        out = {}
        for alias, backend in self.backends.items():
            binding = self.spec.models[alias]
            out[alias] = f"{binding.backend} {backend.model} ({backend.name})"
        return out

    async def _images(self, ticket: Ticket) -> list[ImagePart]:
        if not ticket.attachments:
            return []
        from triagegate.images import load_image_part

        return [await load_image_part(a, self.spec.limits) for a in ticket.attachments]

    async def run(self, ticket: TicketLike) -> Outcome:
        """Run one ticket. Raises :class:`InputError` for a ticket that cannot be processed;
        model failures do not raise: they come back as an Outcome with status ``failed``."""
        ticket = as_ticket(ticket)
        check_limits(ticket, self.spec.limits)
        run_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(ticket_id=ticket.id, run_id=run_id):
            images = await self._images(ticket)
            flags = flags_for(f"{ticket.subject or ''}\n{ticket.text}")
            state = await self.graph.ainvoke(
                {"run_id": run_id, "ticket": ticket, "images": images, "flags": flags},
                context=self._run_context,
            )
            outcome = self._outcome_of(cast("TicketState", state), self._cascade, self._run_context)
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            log_ticket_done(outcome)
        return outcome

    def run_sync(self, ticket: TicketLike) -> Outcome:
        """Blocking wrapper around :meth:`run` for scripts; use ``await run()`` inside async code."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(ticket))
        raise TriagegateError("run_sync() was called inside a running event loop; use 'await pipeline.run()'")

    async def run_many(
        self, tickets: Iterable[TicketLike] | AsyncIterable[TicketLike], *, concurrency: int = 8
    ) -> AsyncIterator[Outcome]:
        """Run tickets with at most ``concurrency`` in flight, yielding Outcomes as they complete.

        A ticket with bad input yields a ``failed`` Outcome naming the problem, and so does
        one that hits an unexpected error (logged with its traceback); the rest go on. Every
        item is given its ticket id before it runs (plain text gets a new one, as
        :class:`Ticket` would), so each Outcome, failed or not, names its ticket.
        Input is consumed lazily and only when a slot is free, and a ticket keeps its slot
        until its Outcome has been taken, so a slow consumer slows intake instead of
        buffering outcomes: memory stays flat for long streams. Closing the iterator early
        cancels the tickets still in flight.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        done: asyncio.Queue[Outcome | None] = asyncio.Queue()
        slots = asyncio.Semaphore(concurrency)

        async def one(item: TicketLike) -> None:
            try:
                ticket = as_ticket(item)
            except InputError as exc:
                done.put_nowait(failed_outcome(ticket_id_of(item), str(exc), self))
                return
            try:
                outcome = await self.run(ticket)
            except InputError as exc:
                outcome = failed_outcome(ticket.id, str(exc), self)
            except Exception as exc:
                log.exception("ticket_crashed", ticket_id=ticket.id)
                reason = f"internal error: {type(exc).__name__}: {exc}"
                outcome = failed_outcome(ticket.id, reason, self)
            done.put_nowait(outcome)

        async def feed() -> None:
            source = aiter(tickets) if isinstance(tickets, AsyncIterable) else _aiter(tickets)
            running: set[asyncio.Task[None]] = set()
            try:
                while True:
                    await slots.acquire()
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(one(item))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
            finally:
                for task in running:
                    task.cancel()
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(RuntimeError):
                        await aclose()

        feeder = asyncio.create_task(feed())
        feeder.add_done_callback(lambda _: done.put_nowait(None))
        try:
            while (outcome := await done.get()) is not None:
                slots.release()
                yield outcome
            feeder.result()
        finally:
            if not feeder.done():
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    async def aclose(self) -> None:
        seen: set[int] = set()
        for backend in self.backends.values():
            if id(backend) not in seen:
                seen.add(id(backend))
                await backend.aclose()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def log_ticket_done(outcome: Outcome) -> None:
    """The one INFO line per ticket: where it went, why, what it cost and how long it took.

    Per-node lines are DEBUG (``node_done``) or WARNING (``node_failed``); see :mod:`triagegate.nodes`.
    """
    log.info(
        "ticket_done",
        route=outcome.route,
        status=outcome.status,
        path=outcome.path,
        skipped=[d.tier for d in outcome.skipped] or None,
        category=outcome.category,
        confidence=outcome.confidence,
        reasons=outcome.escalation_reasons,
        cost_usd=outcome.cost_usd,
        latency_ms=round(outcome.latency_ms, 2),
    )


def failed_outcome(
    ticket_id: str, reason: str, pipeline: Pipeline | None = None, *, status: str = "failed"
) -> Outcome:
    """An Outcome for a ticket that never reached a model (bad input, skipped row)."""
    return Outcome(
        ticket_id=ticket_id,
        run_id=uuid.uuid4().hex[:12],
        graph=pipeline.name if pipeline else None,
        graph_hash=pipeline.graph_hash if pipeline else None,
        status=status,
        errors=[reason],
    )


def ticket_id_of(item: TicketLike) -> str:
    """The id of an item that is not a valid ticket: its own when it has a usable one, else a new one,
    so every Outcome can be matched to its input."""
    if isinstance(item, Ticket):
        return item.id
    if isinstance(item, Mapping):
        given = item.get("id")
        if isinstance(given, str) and 0 < len(given) <= 200:
            return given
    return new_ticket_id()


async def _aiter(items: Iterable[TicketLike]) -> AsyncIterator[TicketLike]:
    for item in items:
        yield item


def load(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    extras: dict[str, Any] | None = None,
    record: str | Path | None = None,
    replay: str | Path | None = None,
) -> Pipeline:
    """Load and validate a graph file and build its pipeline. Raises :class:`ConfigError`.

    ``record`` appends every model call to a JSONL file; ``replay`` answers every alias from
    such a file instead of its models (see :mod:`triagegate.models.replay`).
    ``TRIAGEGATE_RECORD`` and ``TRIAGEGATE_REPLAY`` in the environment set them too.
    """
    env = os.environ if environ is None else environ
    record = record or env.get(environment.RECORD) or None
    replay = replay or env.get(environment.REPLAY) or None
    loaded = load_spec(path, environ=environ)
    if replay is not None:
        from triagegate.models.replay import with_replay

        loaded = with_replay(loaded, replay)
    return Pipeline(loaded, environ=environ, cache_dir=cache_dir, extras=extras, record=record)
