"""The service's link to the outcome store: every Outcome and shadow verdict written, and the
report's figures read back for ``/metrics``.

A failed write is logged and counted (``triagegate_store_errors``), never turned into a
failed request: the customer's answer does not depend on the store. The figures are read
from the store in a worker thread (a PostgreSQL read blocks) at most every
``report_refresh_s`` seconds, over the last ``report_window_s`` seconds, and computed by the
same pure functions as ``triagegate report``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from triagegate.log import get_logger
from triagegate.pipeline import Pipeline
from triagegate.serve.metrics import ServiceMetrics
from triagegate.serve.settings import ServeSettings
from triagegate.store import Label, OutcomeWriter, attach_store, describe_store, read_store
from triagegate.tuning.monitoring import MonitoringReport, build_report
from triagegate.types import Outcome

log = get_logger("triagegate.serve")


class StoreLink:
    def __init__(self, pipeline: Pipeline, settings: ServeSettings, metrics: ServiceMetrics) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self._store: OutcomeWriter | None = None
        self._detach: Callable[[], Awaitable[None]] | None = None
        self._read_at = 0.0
        self._refreshing: asyncio.Lock = asyncio.Lock()

    async def open(self) -> None:
        url = self.settings.store
        if url is None:
            return
        self._store, self._detach = await attach_store(url, self.pipeline, on_label=self._put_label)
        log.info("store_open", store=describe_store(url))

    async def close(self) -> None:
        if self._detach is not None:
            await self._detach()
            self._detach = None
            self._store = None

    async def write(self, outcome: Outcome) -> None:
        if self._store is None:
            return
        try:
            await self._store.upsert(outcome)
        except Exception as exc:
            self.metrics.store_errors.inc()
            log.warning(
                "store_write_failed", ticket_id=outcome.ticket_id, error=f"{type(exc).__name__}: {exc}"
            )

    async def _put_label(self, label: Label) -> None:
        assert self._store is not None
        try:
            await self._store.put_label(label)
        except Exception:
            self.metrics.store_errors.inc()
            raise

    def _figures(self) -> MonitoringReport:
        assert self.settings.store is not None
        since = time.time() - self.settings.report_window_s
        return build_report(read_store(self.settings.store, since=since))

    async def refresh_figures(self) -> None:
        """Update the shadow counters, and the report gauges when they are older than the refresh interval."""
        shadows = self.pipeline.shadows
        if shadows is not None:
            self.metrics.observe_shadows(shadows.capped, shadows.runs, shadows.spent_usd)
        if self._store is None:
            return
        async with self._refreshing:
            if time.monotonic() - self._read_at < self.settings.report_refresh_s and self._read_at:
                return
            try:
                figures = await asyncio.to_thread(self._figures)
            except Exception as exc:
                log.warning("store_read_failed", error=f"{type(exc).__name__}: {exc}")
                return
            self._read_at = time.monotonic()
            self.metrics.observe_report(figures)
