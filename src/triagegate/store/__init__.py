"""The outcome store: one schema for every interface's Outcomes, the labels that judge them,
and what the report compares them with.

``batch``, ``serve`` and the queue workers write their Outcomes here, keyed by ticket id and
graph hash; shadow runs, people (the human handoff) and data sets write ``labels``;
``calibrate`` writes the reference confidence histogram. ``triagegate report`` and
``calibrate --from-store`` read it. A store is named by a URL: ``postgresql://...`` (or
``postgres://``) is PostgreSQL (the ``queue`` extra's psycopg), anything else a SQLite file
(a path, or ``sqlite:///path``).

Opening a store brings its schema up to date (numbered migrations, :mod:`.schema`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Protocol

from triagegate.errors import ConfigError, TriagegateError
from triagegate.store.records import (
    LABEL_SOURCES,
    GraphInfo,
    Label,
    LabelSource,
    Reference,
    Snapshot,
    StoredOutcome,
)
from triagegate.types import Outcome

if TYPE_CHECKING:
    from triagegate.pipeline import Pipeline

__all__ = [
    "LABEL_SOURCES",
    "GraphInfo",
    "Label",
    "LabelSource",
    "OutcomeWriter",
    "Reference",
    "Snapshot",
    "StoreError",
    "StoredOutcome",
    "attach_store",
    "describe_store",
    "graph_info",
    "is_postgres",
    "open_store",
    "read_store",
]


class OutcomeWriter(Protocol):
    """What every dialect's store offers its writers (all committed when they return)."""

    async def open(self) -> OutcomeWriter: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> OutcomeWriter: ...
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    async def upsert(self, outcome: Outcome) -> None: ...
    async def upsert_many(self, outcomes: Sequence[Outcome]) -> None: ...
    async def put_label(self, label: Label) -> None: ...
    async def register_graph(self, info: GraphInfo) -> None: ...
    async def put_reference(self, reference: Reference) -> None: ...


class StoreError(TriagegateError):
    """The outcome store cannot be opened, written or read (the message names it, password hidden)."""


def describe_store(url: str) -> str:
    """``url`` fit for logs and errors: a PostgreSQL URL's password replaced by ``***``."""
    if not is_postgres(url):
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> Path:
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if not path.strip():
        raise ConfigError("the outcome store is empty: give a SQLite file path or a postgresql:// URL")
    return Path(path)


def _postgres() -> ModuleType:
    try:
        from triagegate.store import postgres
    except ImportError:
        raise ConfigError(
            "a PostgreSQL outcome store needs the queue extra: pip install 'triagegate[queue]'"
        ) from None
    return postgres


def open_store(url: str, *, clock: Callable[[], float] = time.time) -> OutcomeWriter:
    """A store for ``url``, not yet opened (``await store.open()``, or ``async with``)."""
    if is_postgres(url):
        store: OutcomeWriter = _postgres().OutcomeStore(url, clock=clock, migrate_on_open=True)
        return store
    from triagegate.store.sqlite import SqliteStore

    return SqliteStore(_sqlite_path(url), clock=clock)


def read_store(url: str, *, since: float | None = None, graph_hash: str | None = None) -> Snapshot:
    """Everything the report needs from the store at ``url`` (outcomes since ``since``, Unix seconds).

    Raises :class:`ConfigError` for a SQLite file that does not exist (a typo would otherwise
    create an empty store and report nothing).
    """
    if is_postgres(url):
        snapshot: Snapshot = _postgres().read(url, since=since, graph_hash=graph_hash)
        return snapshot
    from triagegate.store.sqlite import SqliteStore

    path = _sqlite_path(url)
    if not path.is_file():
        raise ConfigError(f"no outcome store at {path}: give the file batch or serve wrote (--store)")
    store = SqliteStore(path).connect()
    try:
        return store.read(since=since, graph_hash=graph_hash)
    finally:
        store.disconnect()


def graph_info(pipeline: Pipeline) -> GraphInfo:
    """The tiers and precision targets of ``pipeline``'s graph, as the report reads them."""
    spec = pipeline.spec
    targets = {
        t.name: t.gate.shadow.target
        for t in spec.tiers
        if t.gate is not None and t.gate.shadow is not None and t.gate.shadow.target is not None
    }
    return GraphInfo(graph_hash=pipeline.graph_hash, graph=spec.name, tiers=spec.tier_names, targets=targets)


async def attach_store(
    url: str, pipeline: Pipeline, *, on_label: Callable[[Label], Awaitable[None]] | None = None
) -> tuple[OutcomeWriter, Callable[[], Awaitable[None]]]:
    """Open the store at ``url`` for ``pipeline``: its schema migrated, its graph registered and,
    where the pipeline shadows, its verdicts routed to ``on_label`` (default: the store's
    ``put_label``). Returns the store and the coroutine function that undoes all of it; a
    failure to open closes what was opened and raises."""
    store = open_store(url)
    try:
        await store.open()
        await store.register_graph(graph_info(pipeline))
    except BaseException:
        await store.close()
        raise
    unsubscribe = pipeline.shadows.subscribe(on_label or store.put_label) if pipeline.shadows else None

    async def detach() -> None:
        if unsubscribe is not None:
            unsubscribe()
        await store.close()

    return store, detach
