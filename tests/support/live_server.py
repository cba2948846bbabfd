"""Serving an ASGI app on a loopback port from a background thread, for real-HTTP tests."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from triagegate.serve.runner import bind


class LiveServer:
    """``with LiveServer(app) as server: httpx.get(server.url + "/healthz")``; stops (drains) on exit."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveServer:
        sock = bind(self.host, 0)
        self.url = f"http://{self.host}:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
