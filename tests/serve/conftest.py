"""A scripted pipeline behind a live loopback server, and small helpers for the API tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import triagegate
from tests.support.live_server import LiveServer
from triagegate.models.base import ChatRequest
from triagegate.pipeline import Pipeline
from triagegate.serve.app import create_app
from triagegate.serve.settings import ServeSettings

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
SCRIPTED = GRAPHS / "scripted.yaml"
LOOPBACK = GRAPHS / "loopback_openai.yaml"
KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"

Handler = Callable[[ChatRequest], Any]


def triage_reply(code: str = "A", confidence: float = 0.95) -> str:
    """A mini-tier reply picking option ``code`` (A = billing in tests/graphs/scripted.yaml)."""
    return json.dumps(
        {
            "category": code,
            "priority": "normal",
            "complexity": "low",
            "needs_vision": False,
            "answer": "The duplicate charge will be refunded.",
            "confidence": confidence,
        }
    )


def escalation_reply() -> str:
    return json.dumps({"category": "billing", "priority": "high", "answer": "A specialist looked at it."})


def scripted_pipeline(mini: Handler | None = None, flagship: Handler | None = None) -> Pipeline:
    return triagegate.load(
        SCRIPTED,
        environ={},
        extras={
            "scripted": {
                "mini": {"chat": mini or (lambda _r: triage_reply())},
                "flagship": {"chat": flagship or (lambda _r: escalation_reply())},
            }
        },
    )


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    code: str = body["error"]["code"]
    return code


class Service:
    """A running app plus an HTTP client pointed at it."""

    def __init__(self, pipeline: Pipeline, settings: ServeSettings) -> None:
        self.pipeline = pipeline
        self.app = create_app(pipeline, settings)
        self.server = LiveServer(self.app).start()
        self.url = self.server.url
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., Service]]:
    """``serve(pipeline=None, **settings)`` starts a service; all are stopped after the test."""
    started: list[Service] = []

    def start(pipeline: Pipeline | None = None, **settings: Any) -> Service:
        settings.setdefault("rate_limit", 0)
        service = Service(pipeline or scripted_pipeline(), ServeSettings(**settings))
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()
