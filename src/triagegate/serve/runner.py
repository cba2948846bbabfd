"""Running the app under uvicorn from the CLI: bind, announce, drain on SIGTERM, exit 0.

The socket is bound here (not by uvicorn) so ``--port 0`` works and the ``READY`` line
names the real port; it is created with ``IPPROTO_TCP`` so asyncio turns Nagle off on
accepted connections (a socket made with protocol 0 keeps Nagle, which with delayed
ACKs adds about 40 ms to every keep-alive response). uvicorn's own signal handling does
the draining; a no-op handler installed first makes the signal it re-raises afterwards
harmless, so a drained shutdown exits 0 instead of dying by the signal.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import uvicorn

from triagegate.pipeline import load
from triagegate.serve.app import create_app
from triagegate.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``localhost`` and names resolved, first address wins)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"READY {self.url}", flush=True)


def run_server(
    graph: Path, settings: ServeSettings, *, host: str, port: int, shutdown_timeout: float
) -> None:
    """Load ``graph``, serve it until SIGTERM/SIGINT, drain, close the pipeline."""
    pipeline = load(graph)
    app = create_app(pipeline, settings)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(max(1, shutdown_timeout)),
        timeout_keep_alive=30,
        server_header=False,
    )
    server = _AnnouncingServer(config, f"http://{shown}:{bound_port}")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        sys.exit(1)
