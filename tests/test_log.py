"""Logging: secrets never reach a log line; every node logs once with the ticket and run ids bound."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

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
    """Let a test reconfigure structlog, and put the previous configuration back afterwards."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
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
    assert [e["node"] for e in node_done] == ["triage", "escalate"]
    for event in node_done:
        assert event["ticket_id"] == "tk-42"
        assert event["run_id"] == outcome.run_id
        assert event["log_level"] == "debug"
    by_node = {e["node"]: e for e in node_done}
    assert by_node["triage"]["model"] == "mini"
    assert by_node["escalate"]["tokens_in"] == outcome.nodes[-1].input_tokens
    (done,) = [e for e in events if e["event"] == "ticket_done"]
    assert done["log_level"] == "info"
    assert (done["ticket_id"], done["route"], done["reasons"]) == ("tk-42", "flagship", ["low_confidence"])
    assert done["path"] == ["triage", "gate", "escalate"]
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
    assert events[0]["node"] == "triage" and "mini is down" in events[0]["error"]
    assert events[1]["path"] == outcome.path == ["triage", "gate", "escalate"]
