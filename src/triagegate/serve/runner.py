"""Running the app under uvicorn from the CLI: bind, announce, drain on SIGTERM, exit 0.

The socket is bound here (not by uvicorn) so ``--port 0`` works and the ``READY`` line
names the real port; it is created with ``IPPROTO_TCP`` so asyncio turns Nagle off on
accepted connections (a socket made with protocol 0 keeps Nagle, which with delayed
ACKs adds about 40 ms to every keep-alive response). uvicorn's own signal handling does
the draining; a no-op handler installed first makes the signal it re-raises afterwards
harmless, so a drained shutdown exits 0 instead of dying by the signal.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from triagegate.errors import ConfigError, TriagegateError
from triagegate.pipeline import load
from triagegate.serve.app import create_app
from triagegate.serve.settings import ServeSettings


def reserve(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` but not yet listening, so a port in use or a bad
    address fails before the graph is loaded and no connection is accepted too early.

    Raises :class:`ConfigError` for an address that does not resolve and
    :class:`TriagegateError` when the port cannot be had (in use, not permitted).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot serve on {host!r}: the address does not resolve ({exc.strerror})"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _unavailable(host, port, exc) from None
    return sock


def listen(sock: socket.socket) -> socket.socket:
    """Start accepting on a socket from :func:`reserve` (non-blocking, as asyncio wants it)."""
    try:
        sock.listen(2048)
    except OSError as exc:
        host, port = sock.getsockname()[:2]
        sock.close()
        raise _unavailable(host, port, exc) from None
    sock.setblocking(False)
    return sock


def _unavailable(host: str, port: int, exc: OSError) -> TriagegateError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return TriagegateError(
            f"cannot listen on {where}: the port is in use by another process; stop it, "
            "or pick another port with --port (0 picks a free one)"
        )
    return TriagegateError(f"cannot listen on {where}: {exc.strerror or exc}")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``localhost`` and names resolved, first address wins)."""
    return listen(reserve(host, port))


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
    """Reserve the port, load ``graph``, serve it until SIGTERM/SIGINT, drain, close the pipeline.

    uvicorn is given no logging configuration of its own (``log_config=None``): its records
    go to the root logger the CLI configured, through the same processors and redaction as
    triagegate's, at the same level.
    """
    sock = reserve(host, port)
    try:
        pipeline = load(graph)
    except BaseException:
        sock.close()
        raise
    app = create_app(pipeline, settings)
    try:
        listen(sock)
    except BaseException:
        asyncio.run(pipeline.aclose())
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
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
