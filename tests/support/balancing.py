"""Load-balancing scenarios over loopback server processes, shared by tests and the bench.

:class:`ServerProcess` runs ``tests/support/openai_server.py`` in its own process and steers
it over HTTP (``/control/faults``, ``/control/stats``). :func:`run_paced` sends a fixed number
of chat requests through a backend at a steady rate, with hooks at given request counts
(make an endpoint fail, heal it), and returns what each request got.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from triagegate.errors import ModelError
from triagegate.models import ChatRequest, Message, ModelBackend

SCRIPT = Path(__file__).with_name("openai_server.py")
REQUEST = ChatRequest(
    messages=(Message("system", "Be brief."), Message("user", "Where is my card?")), max_tokens=16
)


class ServerProcess:
    """One loopback OpenAI-compatible server in a child process (``READY <base_url>`` on start)."""

    def __init__(self, *args: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("READY ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the loopback server did not start: {line!r}")
        self.base_url = line.split()[1]
        self.root = self.base_url.removesuffix("/v1")

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Set the server's fault knobs (``fault_rate``, ``faults``, ``latency``) while it runs."""
        response = httpx.post(f"{self.root}/control/faults", json=knobs, timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.root}/control/stats", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass(frozen=True)
class Done:
    """One request of a run: when it was sent and finished (``time.time()``), and what it got."""

    index: int
    sent: float
    finished: float
    endpoint: str | None
    requests: int
    error: str | None


async def run_paced(
    backend: ModelBackend,
    count: int,
    *,
    rate: float,
    concurrency: int,
    hooks: Mapping[int, Callable[[], Any]] | None = None,
) -> list[Done]:
    """Send ``count`` requests through ``backend``, request ``i`` no earlier than ``i / rate`` seconds
    after the start and at most ``concurrency`` at once; ``hooks[i]`` runs (in a thread) just
    before request ``i`` is sent. A :class:`~triagegate.errors.ModelError` is recorded, not raised.

    The rate bounds how fast the run can go, so each stretch between hooks lasts at least
    its share of ``count / rate`` seconds however fast the machine is; the time a hook takes
    is added to the schedule rather than made up with a burst.
    """
    slots = asyncio.Semaphore(concurrency)
    done: list[Done] = []
    start = time.monotonic()

    async def one(index: int) -> None:
        sent = time.time()
        try:
            result = await backend.chat(REQUEST)
        except ModelError as exc:
            done.append(Done(index, sent, time.time(), None, 0, f"{type(exc).__name__}: {exc}"))
        else:
            done.append(Done(index, sent, time.time(), result.endpoint, result.usage.requests, None))
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        hook = (hooks or {}).get(index)
        if hook is not None:
            paused = time.monotonic()
            await asyncio.to_thread(hook)
            start += time.monotonic() - paused  # no catch-up burst for the time the hook took
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    return sorted(done, key=lambda d: d.index)


def shares(names: Sequence[str | None], endpoints: Sequence[str]) -> list[float]:
    """The fraction of ``names`` that is each of ``endpoints``, in order."""
    total = len(names) or 1
    return [sum(1 for n in names if n == e) / total for e in endpoints]


def between(arrivals: Sequence[float], start: float, end: float) -> list[float]:
    return [t for t in arrivals if start <= t < end]
