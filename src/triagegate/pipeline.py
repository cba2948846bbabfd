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
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog
from pydantic import ValidationError

from triagegate import environment
from triagegate.errors import HandoffNotFound, HandoffResolved, InputError, TriagegateError
from triagegate.log import get_logger
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ImagePart, ModelBackend
from triagegate.prompts import Template, load_graph_templates
from triagegate.screening import flags_for
from triagegate.spec import Limits, LoadedSpec, load_spec
from triagegate.types import HumanAction, HumanAnswer, Outcome, Ticket, Turn, new_ticket_id

if TYPE_CHECKING:
    from triagegate.checkpoints import Checkpoints, HandoffRecord, HandoffStatus
    from triagegate.graph import Graph
    from triagegate.shadow import ShadowRunner
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


def check_storable(ticket: Ticket) -> None:
    """Refuse a ticket the checkpointer cannot keep, before it runs: LangGraph's msgpack serialiser
    takes integers of at most 64 bits, and JSON (so a ticket's ``metadata``) has no such limit."""
    from triagegate.checkpoints import serializer

    try:
        serializer().dumps_typed(ticket)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(
            f"ticket {ticket.id!r} cannot be kept on a thread: its metadata holds a value the checkpointer "
            f"cannot store ({exc}; integers must fit in 64 bits); send it as text, or without a thread_id "
            "to a graph without a handoff rule",
            code="not_storable",
        ) from None


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
        checkpoints: str | Path | None = None,
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
        self.checkpoints_location = str(
            checkpoints
            or env.get(environment.CHECKPOINTS)
            or self._context.cache_dir / "checkpoints" / f"{self.spec.name}.sqlite"
        )
        """Where handoffs and threads are kept (:mod:`triagegate.checkpoints`), opened on first use."""
        self._checkpoints: Checkpoints | None = None
        self._durable: Graph | None = None
        self._opening = asyncio.Lock()
        self._threads: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        """One lock per thread in use, so two tickets of one conversation run one after the other."""
        self.shadows = _shadow_runner(self)
        """Shadow runs of kept tickets, when a tier's gate has ``shadow`` (:mod:`triagegate.shadow`)."""

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

    @property
    def keeps_threads(self) -> bool:
        """Whether every ticket runs under the checkpointer: the graph can hand tickets to a person."""
        return self.spec.handoff is not None

    async def run(self, ticket: TicketLike) -> Outcome:
        """Run one ticket. Raises :class:`InputError` for a ticket that cannot be processed;
        model failures do not raise: they come back as an Outcome with status ``failed``.

        A graph with a ``handoff`` rule, or a ticket with a ``thread_id``, runs under the
        checkpointer (see :meth:`resume`); any other ticket keeps nothing and pays nothing for it.
        """
        ticket = as_ticket(ticket)
        check_limits(ticket, self.spec.limits)
        run_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(ticket_id=ticket.id, run_id=run_id):
            images = await self._images(ticket)
            flags = flags_for(f"{ticket.subject or ''}\n{ticket.text}")
            if self.keeps_threads or ticket.thread_id is not None:
                outcome = await self._run_on_thread(ticket, run_id, started, images, flags)
            else:
                state = await self.graph.ainvoke(
                    {"run_id": run_id, "ticket": ticket, "images": images, "flags": flags},
                    context=self._run_context,
                )
                outcome = self._outcome_of(cast("TicketState", state), self._cascade, self._run_context)
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            if self.shadows is not None and outcome.status != "awaiting_human":
                self.shadows.offer(ticket, images, flags, outcome)
            log_ticket_done(outcome)
        return outcome

    async def checkpoints(self) -> Checkpoints:
        """The open checkpointer and handoff index (opened, and the durable graph compiled, on first use)."""
        if self._checkpoints is None:
            async with self._opening:
                if self._checkpoints is None:
                    from triagegate.checkpoints import Checkpoints
                    from triagegate.graph import build_graph

                    opened = await Checkpoints.open(self.checkpoints_location)
                    capabilities = {alias: backend.capabilities for alias, backend in self.backends.items()}
                    self._durable = build_graph(self.spec, capabilities, checkpointer=opened.saver)
                    self._checkpoints = opened
        return self._checkpoints

    async def _durable_graph(self) -> tuple[Graph, Checkpoints]:
        checkpoints = await self.checkpoints()
        assert self._durable is not None
        return self._durable, checkpoints

    async def _run_on_thread(
        self, ticket: Ticket, run_id: str, started: float, images: list[ImagePart], flags: list[str]
    ) -> Outcome:
        """Run ``ticket`` on its thread (its ``thread_id``, else its id), continuing what the thread holds.

        The thread's last exchange (its ticket's history, text and answer) goes before the
        ticket's own ``messages``. A thread paused for a person takes no new ticket
        (:class:`InputError`, ``thread_awaiting_human``), except the very ticket it paused on,
        which gets its pending Outcome back, and a ticket a person already answered gets that
        final Outcome back: running a ticket twice (a redelivered queue entry) hands it off once.
        Tickets of one thread run one after the other within a pipeline.
        """
        check_storable(ticket)
        thread = ticket.thread_id or ticket.id
        lock = self._threads.get(thread)
        if lock is None:
            lock = self._threads[thread] = asyncio.Lock()
        async with lock:
            return await self._run_on_thread_locked(ticket, run_id, thread, started, images, flags)

    async def _run_on_thread_locked(
        self,
        ticket: Ticket,
        run_id: str,
        thread: str,
        started: float,
        images: list[ImagePart],
        flags: list[str],
    ) -> Outcome:
        graph, checkpoints = await self._durable_graph()
        config: Any = {"configurable": {"thread_id": thread}}
        snapshot = await graph.aget_state(config)
        held = cast("TicketState", snapshot.values)
        earlier: list[Turn] = []
        if held.get("ticket") is not None:
            before = held["ticket"]
            if snapshot.interrupts:
                if before.id != ticket.id:
                    raise InputError(
                        f"thread {thread} is waiting for a person to answer ticket {before.id}; "
                        "resume that handoff before adding to the thread",
                        code="thread_awaiting_human",
                    )
                outcome = self._paused_outcome(held, snapshot.interrupts[0].value, thread)
                await checkpoints.index.pending(outcome, before)
                return outcome
            if before.id == ticket.id and held.get("handoff") is not None:
                return self._outcome_of(held, self._cascade, self._run_context, thread_id=thread)
            earlier = list(before.messages)
            reply = held.get("reply")
            if before.id != ticket.id:
                earlier.append(Turn(role="customer", content=before.text))
                if reply is not None and reply.answer:
                    earlier.append(Turn(role="agent", content=reply.answer))
        if earlier or ticket.thread_id != thread:
            ticket = ticket.model_copy(update={"messages": earlier + ticket.messages, "thread_id": thread})
        from langgraph.types import Overwrite

        start: Any = {
            "run_id": run_id,
            "ticket": ticket,
            "images": images,
            "flags": flags,
            "reply": None,
            "handoff": None,
            "visits": Overwrite([]),
            "runs": Overwrite([]),
            "errors": Overwrite([]),
        }
        state = await graph.ainvoke(
            start,
            config,
            context=self._run_context,
            durability="exit",
        )
        interrupts = state.get("__interrupt__") or ()
        if interrupts:
            outcome = self._paused_outcome(cast("TicketState", state), interrupts[0].value, thread)
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            await checkpoints.index.pending(outcome, ticket)
            return outcome
        return self._outcome_of(
            cast("TicketState", state), self._cascade, self._run_context, thread_id=thread
        )

    def _paused_outcome(self, state: TicketState, offered: Any, thread: str) -> Outcome:
        from triagegate.types import Handoff

        pending = Handoff.model_validate(offered)
        return self._outcome_of(state, self._cascade, self._run_context, pending=pending, thread_id=thread)

    async def resume(
        self,
        thread_id: str,
        action: HumanAction | HumanAnswer,
        text: str | None = None,
        *,
        by: str | None = None,
        category: str | None = None,
        claimer: str | None = None,
    ) -> Outcome:
        """Answer the handoff on ``thread_id`` and finish its run: ``approve`` the draft, ``edit`` it or ``answer``.

        Returns the final Outcome (``route: human``, ``handoff`` with the draft, the answer and
        their diff). Raises :class:`HandoffNotFound` for a thread with no handoff,
        :class:`HandoffResolved` when it was answered already or another resume holds it (in
        this process or another: the claim is one conditional update in the index), and
        :class:`InputError` for an answer that does not fit (``approve`` without a draft,
        ``edit`` without text). A refused resume changes nothing.

        ``claimer`` names this resume for the claim (default: a new id). A caller that may
        deliver the same resume twice (a queue entry redelivered after its worker died) passes
        the same name each time: its own earlier claim is taken up again, and a resume it already
        finished returns that Outcome instead of being refused.
        """
        try:
            answer = (
                action
                if isinstance(action, HumanAnswer)
                else HumanAnswer(action=action, text=text, by=by, category=category)
            )
        except ValidationError as exc:
            raise InputError(
                f"invalid answer: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
            ) from None
        graph, checkpoints = await self._durable_graph()
        record = await checkpoints.index.get(thread_id)
        if record is None:
            raise HandoffNotFound(f"no handoff is kept under thread {thread_id!r}", thread_id=thread_id)
        if claimer is not None and record.claimed_by == claimer and record.status == "resolved":
            return record.outcome
        if record.status == "resolved":
            raise HandoffResolved(
                f"the handoff on thread {thread_id!r} is {record.status} already; nothing was changed",
                thread_id=thread_id,
            )
        if answer.category is not None and answer.category not in self.spec.taxonomy.category_names:
            raise InputError(
                f"unknown category {answer.category!r}; the taxonomy has: "
                f"{', '.join(self.spec.taxonomy.category_names)}",
                code="unknown_category",
            )
        offered = record.outcome.handoff
        if answer.action == "approve" and (offered is None or offered.draft is None):
            raise InputError(
                f"the handoff on thread {thread_id!r} has no draft to approve; send 'answer' with the text",
                code="no_draft",
            )
        claimer = claimer or uuid.uuid4().hex
        if not await checkpoints.index.claim(thread_id, claimer):
            raise HandoffResolved(
                f"the handoff on thread {thread_id!r} was just taken by another resume; nothing was changed",
                thread_id=thread_id,
            )
        started = time.perf_counter()
        config: Any = {"configurable": {"thread_id": thread_id}}
        from langgraph.types import Command

        try:
            snapshot = await graph.aget_state(config)
            held = cast("TicketState", snapshot.values)
            if not snapshot.interrupts and held.get("handoff") is not None:
                # A resume that died after the human step and before recording it: its answer stands.
                outcome = self._outcome_of(held, self._cascade, self._run_context, thread_id=thread_id)
                await checkpoints.index.resolved(outcome, claimer)
                if record.claimed_by != claimer:
                    raise HandoffResolved(
                        f"the handoff on thread {thread_id!r} was answered already; nothing was changed",
                        thread_id=thread_id,
                    )
                return outcome
            if not snapshot.interrupts:
                raise HandoffResolved(
                    f"thread {thread_id!r} is not paused for a person; nothing was changed",
                    thread_id=thread_id,
                )
            with structlog.contextvars.bound_contextvars(ticket_id=held["ticket"].id, run_id=held["run_id"]):
                state = await graph.ainvoke(
                    Command(resume=answer.model_dump(mode="json")),
                    config,
                    context=self._run_context,
                    durability="exit",
                )
                outcome = self._outcome_of(
                    cast("TicketState", state), self._cascade, self._run_context, thread_id=thread_id
                )
                outcome.latency_ms = (time.perf_counter() - started) * 1000
                log_ticket_done(outcome)
        except BaseException:
            await checkpoints.index.release(thread_id, claimer)
            raise
        await checkpoints.index.resolved(outcome, claimer)
        return outcome

    async def handoffs(
        self, status: HandoffStatus | None = "pending", *, limit: int = 100, offset: int = 0
    ) -> list[HandoffRecord]:
        """The handoffs kept for this graph's checkpoints, oldest first (``pending`` ones by default)."""
        _, checkpoints = await self._durable_graph()
        return await checkpoints.index.list(status, limit=limit, offset=offset)

    async def handoff(self, thread_id: str) -> HandoffRecord:
        """The handoff on ``thread_id``; raises :class:`HandoffNotFound`."""
        _, checkpoints = await self._durable_graph()
        record = await checkpoints.index.get(thread_id)
        if record is None:
            raise HandoffNotFound(f"no handoff is kept under thread {thread_id!r}", thread_id=thread_id)
        return record

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

    async def drain_shadows(self) -> None:
        """Wait for the shadow runs in flight (a no-op without shadow sampling)."""
        if self.shadows is not None:
            await self.shadows.drain()

    async def aclose(self) -> None:
        """Finish the shadow runs in flight, then close the checkpoints and every backend."""
        await self.drain_shadows()
        if self._checkpoints is not None:
            await self._checkpoints.aclose()
            self._checkpoints = self._durable = None
        seen: set[int] = set()
        for backend in self.backends.values():
            if id(backend) not in seen:
                seen.add(id(backend))
                await backend.aclose()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _shadow_runner(pipeline: Pipeline) -> ShadowRunner | None:
    if not any(t.gate is not None and t.gate.shadow is not None for t in pipeline.spec.tiers):
        return None
    from triagegate.cost import Estimator
    from triagegate.shadow import ShadowRunner

    estimator = Estimator(pipeline.spec, pipeline.templates)
    return ShadowRunner(pipeline._run_context, pipeline._cascade, estimator)


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
    checkpoints: str | Path | None = None,
) -> Pipeline:
    """Load and validate a graph file and build its pipeline. Raises :class:`ConfigError`.

    ``record`` appends every model call to a JSONL file; ``replay`` answers every alias from
    such a file instead of its models (see :mod:`triagegate.models.replay`).
    ``TRIAGEGATE_RECORD`` and ``TRIAGEGATE_REPLAY`` in the environment set them too.
    ``checkpoints`` is where handoffs and threads are kept (a SQLite file or a
    ``postgresql://`` DSN; ``TRIAGEGATE_CHECKPOINTS``, else a file under the cache directory).
    """
    env = os.environ if environ is None else environ
    record = record or env.get(environment.RECORD) or None
    replay = replay or env.get(environment.REPLAY) or None
    loaded = load_spec(path, environ=environ)
    if replay is not None:
        from triagegate.models.replay import with_replay

        loaded = with_replay(loaded, replay)
    return Pipeline(
        loaded, environ=environ, cache_dir=cache_dir, extras=extras, record=record, checkpoints=checkpoints
    )
