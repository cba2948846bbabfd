"""Logging: secrets never reach a log line; every node logs once with the ticket and run ids bound."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

import triagegate
from triagegate import log
from triagegate.log import redact_secrets, register_secret
from triagegate.types import Ticket

SCRIPTED = Path(__file__).resolve().parent / "graphs" / "scripted.yaml"


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered by one test must not leak into the next."""
    monkeypatch.setattr(log, "_known_secrets", set())


@pytest.fixture
def structlog_config() -> Iterator[None]:
    """Let a test reconfigure logging, and put structlog's and the root logger's state back afterwards."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    log.reset()
    structlog.configure(**saved)


def test_values_under_secret_keys_are_blanked() -> None:
    event = {
        "event": "model_request",
        "api_key": "abc",
        "Authorization": "Bearer something",
        "client_secret": "s3cr3t",
        "password": "hunter2",
        "refresh_token": "r",
        "tokens_in": 12,
        "tokens_out": 3,
        "endpoint": "mini@scripted",
    }
    out = redact_secrets(None, "info", dict(event))
    for key in ("api_key", "Authorization", "client_secret", "password", "refresh_token"):
        assert out[key] == "[REDACTED]", key
    assert (out["tokens_in"], out["tokens_out"]) == (12, 3)
    assert out["endpoint"] == "mini@scripted"
    assert out["event"] == "model_request"


def test_secret_looking_strings_are_scrubbed_under_any_key() -> None:
    out = redact_secrets(
        None,
        "warning",
        {"event": "model_retry", "detail": "401 for key sk-live1234567890abcd; header Bearer abcdefghijkl."},
    )
    assert "sk-live1234567890abcd" not in out["detail"]
    assert "abcdefghijkl" not in out["detail"]
    assert out["detail"].startswith("401 for key [REDACTED]")


def test_registered_secrets_are_scrubbed_wherever_they_appear() -> None:
    register_secret("pa55-w0rd-xyz")
    out = redact_secrets(
        None, "info", {"event": "failed with pa55-w0rd-xyz", "url": "http://u:pa55-w0rd-xyz@h/"}
    )
    assert out["event"] == "failed with [REDACTED]"
    assert out["url"] == "http://u:[REDACTED]@h/"


def test_too_short_values_are_not_registered_as_secrets() -> None:
    register_secret("ab")
    assert redact_secrets(None, "info", {"event": "tab about"})["event"] == "tab about"


def test_secrets_inside_nested_values_are_scrubbed() -> None:
    register_secret("nested-secret-123")
    out = redact_secrets(
        None,
        "info",
        {"event": "x", "headers": {"Authorization": "Bearer abcdefghijkl"}, "args": ["nested-secret-123"]},
    )
    assert "abcdefghijkl" not in json.dumps(out)
    assert "nested-secret-123" not in json.dumps(out)


def test_configured_json_logs_are_redacted(structlog_config: None) -> None:
    stream = io.StringIO()
    log.configure("INFO", json=True, stream=stream)
    structlog.get_logger("t").info("calling", api_key="k-123", detail="token sk-abcdefghijklmnop")
    line = json.loads(stream.getvalue().strip())
    assert line["api_key"] == "[REDACTED]"
    assert line["detail"] == "token [REDACTED]"
    assert line["level"] == "info"


def test_configured_level_filters(structlog_config: None) -> None:
    stream = io.StringIO()
    log.configure("WARNING", json=True, stream=stream)
    logger = structlog.get_logger("t")
    logger.info("quiet")
    logger.warning("loud")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]


async def test_each_node_logs_once_with_ticket_and_run_ids(structlog_config: None) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    mini_reply = {
        "category": "A",
        "priority": "normal",
        "complexity": "low",
        "needs_vision": False,
        "answer": "draft",
        "confidence": 0.2,
    }
    flagship_reply = {"category": "billing", "priority": "normal", "answer": "final"}
    pipeline = triagegate.load(
        SCRIPTED,
        environ={},
        extras={
            "scripted": {
                "mini": {"chat": lambda _r: json.dumps(mini_reply)},
                "flagship": {"chat": lambda _r: json.dumps(flagship_reply)},
            }
        },
    )
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        outcome = await pipeline.run(Ticket(id="tk-42", text="I was charged twice."))
    assert outcome.route == "flagship"

    node_done = [e for e in events if e["event"] == "node_done"]
    assert [e["node"] for e in node_done] == ["mini", "flagship"]
    for event in node_done:
        assert event["ticket_id"] == "tk-42"
        assert event["run_id"] == outcome.run_id
        assert event["log_level"] == "debug"
    by_node = {e["node"]: e for e in node_done}
    assert by_node["mini"]["model"] == "mini"
    assert by_node["flagship"]["tokens_in"] == outcome.nodes[-1].input_tokens
    (done,) = [e for e in events if e["event"] == "ticket_done"]
    assert done["log_level"] == "info"
    assert (done["ticket_id"], done["route"], done["reasons"]) == ("tk-42", "flagship", ["low_confidence"])
    assert done["path"] == ["mini", "flagship"]
    # The ids are unbound once the ticket is done.
    assert "ticket_id" not in structlog.contextvars.get_contextvars()


async def test_a_failed_node_logs_a_warning_and_the_ticket_line_stays_at_info(structlog_config: None) -> None:
    stream = io.StringIO()
    log.configure("INFO", json=True, stream=stream)

    def broken(_request: object) -> str:
        raise triagegate.ModelUnavailable("mini is down")

    pipeline = triagegate.load(
        SCRIPTED,
        environ={},
        extras={
            "scripted": {
                "mini": {"chat": broken},
                "flagship": {
                    "chat": lambda _r: json.dumps(
                        {"category": "billing", "priority": "normal", "answer": "x"}
                    )
                },
            }
        },
    )
    outcome = await pipeline.run(Ticket(id="tk-7", text="I was charged twice."))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [("node_failed", "warning"), ("ticket_done", "info")]
    assert events[0]["node"] == "mini" and "mini is down" in events[0]["error"]
    assert events[1]["path"] == outcome.path == ["mini", "flagship"]


LIBRARY_USER = """
import json, logging, sys
import structlog
import triagegate
from triagegate.types import Ticket

root = logging.getLogger()
before = (structlog.is_configured(), list(root.handlers), root.level)

def broken(_request):
    raise triagegate.ModelUnavailable("mini is down")

reply = json.dumps({"category": "billing", "priority": "normal", "answer": "x"})
pipeline = triagegate.load(
    sys.argv[1], environ={},
    extras={"scripted": {"mini": {"chat": broken}, "flagship": {"chat": lambda _r: reply}}},
)
outcome = pipeline.run_sync(Ticket(id="tk-9", text="I was charged twice."))
after = (structlog.is_configured(), list(root.handlers), root.level)
print(json.dumps({"unchanged": before == after, "configured": after[0], "route": outcome.route}))
"""


def test_the_library_configures_nothing_and_its_user_sees_warnings_but_not_info() -> None:
    """Loading and running a pipeline leaves structlog unconfigured and the root logger as it was;
    with nothing configured, the node failure (WARNING) reaches stderr and ticket_done (INFO) does not."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_USER, str(SCRIPTED)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"unchanged": True, "configured": False, "route": "flagship"}
    assert "node_failed" in done.stderr and "mini is down" in done.stderr
    assert "ticket_done" not in done.stderr


def test_a_library_user_who_configures_stdlib_logging_gets_triagegate_events_through_it(
    structlog_config: None,
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logging.getLogger("triagegate").addHandler(keep)
    logging.getLogger("triagegate").setLevel(logging.INFO)
    try:
        register_secret("lib-user-secret-1")
        log.get_logger("triagegate.test").info("hello", detail="has lib-user-secret-1 in it")
        log.get_logger("triagegate.test").debug("too quiet")
    finally:
        logging.getLogger("triagegate").removeHandler(keep)
        logging.getLogger("triagegate").setLevel(logging.NOTSET)
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [
        ("triagegate.test", logging.INFO, "hello detail='has [REDACTED] in it'")
    ]


def explode(_request: object) -> str:
    raise RuntimeError("boom inside the scripted model")


async def test_a_node_crash_in_json_mode_logs_its_traceback_as_frames(structlog_config: None) -> None:
    stream = io.StringIO()
    log.configure("INFO", json=True, stream=stream)
    pipeline = triagegate.load(
        SCRIPTED, environ={}, extras={"scripted": {"mini": {"chat": explode}, "flagship": {"chat": explode}}}
    )
    outcomes = [o async for o in pipeline.run_many([Ticket(id="tk-crash", text="I was charged twice.")])]
    assert outcomes[0].status == "failed" and outcomes[0].ticket_id == "tk-crash"
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    (crash,) = [e for e in events if e["event"] == "ticket_crashed"]
    assert crash["level"] == "error" and crash["ticket_id"] == "tk-crash"
    assert "exc_info" not in crash
    (error,) = crash["exception"]
    assert error["exc_type"] == "RuntimeError"
    assert error["exc_value"] == "boom inside the scripted model"
    frames = error["frames"]
    assert all({"filename", "lineno", "name"} <= set(f) for f in frames)
    assert frames[-1]["name"] == "explode" and frames[-1]["filename"].endswith("test_log.py")
    assert any(f["filename"].endswith("pipeline.py") for f in frames)
    assert not any("locals" in f for f in frames), "locals could hold keys; they are never logged"


def test_stdlib_records_share_the_json_shape_and_the_redaction(structlog_config: None) -> None:
    """httpx's own request line (a real request over loopback) and a uvicorn error with a
    traceback come out as the same JSON lines as triagegate's events, secrets removed."""
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stream = io.StringIO()
    log.configure("DEBUG", json=True, stream=stream)
    register_secret("registered-secret-42")
    try:
        url = f"http://user:pa55word-in-url@127.0.0.1:{server.server_address[1]}/v1/models"
        with structlog.contextvars.bound_contextvars(ticket_id="tk-http"):
            response = httpx.get(
                url,
                params={"api_key": "query-secret-123"},
                headers={"Authorization": "Bearer sk-header-secret"},
            )
        assert response.status_code == 200
        try:
            raise ValueError("bad frame with registered-secret-42")
        except ValueError:
            logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
        log.get_logger("triagegate.test").warning("ours")
    finally:
        server.shutdown()
        server.server_close()
    text = stream.getvalue()
    for secret in ("query-secret-123", "pa55word-in-url", "sk-header-secret", "registered-secret-42"):
        assert secret not in text
    events = [json.loads(line) for line in text.splitlines()]
    (request,) = [e for e in events if e["logger"] == "httpx"]
    assert request["event"].startswith("HTTP Request: GET http://user:[REDACTED]@127.0.0.1:")
    assert "api_key=[REDACTED]" in request["event"]
    assert request["level"] == "info" and request["ticket_id"] == "tk-http"
    (crash,) = [e for e in events if e["logger"] == "uvicorn.error"]
    assert crash["level"] == "error"
    assert crash["exception"][0]["exc_type"] == "ValueError"
    assert crash["exception"][0]["exc_value"] == "bad frame with [REDACTED]"
    assert (
        crash["exception"][0]["frames"][-1]["name"]
        == "test_stdlib_records_share_the_json_shape_and_the_redaction"
    )
    (ours,) = [e for e in events if e["event"] == "ours"]
    shape = {"event", "level", "logger", "timestamp"}
    assert shape <= set(ours) and shape <= set(request) and shape <= set(crash)


def test_httpx_request_lines_only_show_at_debug(structlog_config: None) -> None:
    stream = io.StringIO()
    log.configure("INFO", json=True, stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET http://example.invalid/")
    logging.getLogger("other.library").info("visible")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["visible"]


def test_configuring_twice_keeps_one_handler(structlog_config: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    log.configure("INFO", json=True, stream=first)
    log.configure("INFO", json=False, stream=second)
    logging.getLogger("some.library").warning("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert "[warning  ]" in second.getvalue()


def test_every_module_logs_through_get_logger() -> None:
    """A module calling structlog.get_logger directly would print every level to stdout in a host
    that configured nothing (structlog's defaults); triagegate.log.get_logger stays quiet there."""
    package = Path(triagegate.__file__).parent
    direct = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "log.py" and "structlog.get_logger(" in path.read_text(encoding="utf-8")
    ]
    assert direct == []
