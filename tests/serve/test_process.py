"""``triagegate serve`` as a real process against the loopback OpenAI server: readiness and draining."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serve.conftest import LOOPBACK
from tests.support.openai_server import OpenAIServer
from tests.support.serve_process import CLI, ServeProcess

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def test_readyz_probes_the_model_endpoints(openai_server: OpenAIServer) -> None:
    up = ServeProcess(LOOPBACK, openai_server.base_url)
    try:
        report = httpx.get(f"{up.url}/readyz", timeout=10)
        assert report.status_code == 200
        assert {m["detail"] for m in report.json()["models"].values()} == {"HTTP 200"}
    finally:
        up.stop()
    down = ServeProcess(LOOPBACK, f"http://127.0.0.1:{free_port()}/v1")
    try:
        started = time.monotonic()
        report = httpx.get(f"{down.url}/readyz", timeout=10)
        assert report.status_code == 503
        body = report.json()
        assert body["status"] == "not_ready"
        assert not body["models"]["mini"]["ready"]
        assert body["models"]["mini"]["detail"].startswith("unreachable")
        assert time.monotonic() - started < 8, "the probe has a short timeout"
        assert httpx.get(f"{down.url}/healthz", timeout=10).status_code == 200, "alive even when not ready"
    finally:
        down.stop()


def test_sigterm_lets_the_request_in_flight_finish(openai_server: OpenAIServer) -> None:
    openai_server.latency = 1.5
    service = ServeProcess(LOOPBACK, openai_server.base_url, "--shutdown-timeout", "20")
    result: dict[str, httpx.Response | BaseException] = {}

    def call() -> None:
        try:
            result["response"] = httpx.post(
                f"{service.url}/v1/tickets", json={"id": "drain-1", "text": "charged twice"}, timeout=30
            )
        except BaseException as exc:
            result["response"] = exc

    try:
        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 20
        while openai_server.in_flight == 0:
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.01)
        service.proc.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        response = result["response"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200
        assert response.json()["ticket_id"] == "drain-1"
        assert service.proc.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{service.url}/healthz", timeout=2)
    finally:
        service.stop()


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    """Regression: serving on a port another process holds printed a 41-line traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        env = {**os.environ, "TRIAGEGATE_API_KEYS": ""}
        done = subprocess.run(
            [CLI, "serve", str(LOOPBACK), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use by another process; stop it, "
        "or pick another port with --port (0 picks a free one)"
    ]
    assert done.stdout == ""


def test_uvicorn_and_triagegate_lines_share_one_json_shape(openai_server: OpenAIServer) -> None:
    """With --log-level INFO off a terminal, uvicorn's own records and triagegate's events are JSON
    lines of one shape on stderr (uvicorn no longer installs its own handlers)."""
    service = ServeProcess(LOOPBACK, openai_server.base_url, "--log-level", "INFO")
    try:
        assert (
            httpx.post(f"{service.url}/v1/tickets", json={"text": "charged twice"}, timeout=30).status_code
            == 200
        )
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=30) == 0
        assert service.proc.stderr is not None
        lines = service.proc.stderr.read().splitlines()
    finally:
        service.stop()
    events = [json.loads(line) for line in lines]
    by_logger = {e["logger"] for e in events}
    assert {"uvicorn.error", "triagegate.pipeline", "triagegate.serve"} <= by_logger
    for event in events:
        assert {"event", "level", "logger", "timestamp"} <= set(event), event
