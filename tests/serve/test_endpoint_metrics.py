"""A balanced alias in the service: answers counted per endpoint, readiness per endpoint, over loopback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import triagegate
from tests.serve.conftest import LOOPBACK, Service
from tests.serve.test_reply_metrics import metric
from tests.support.openai_server import OpenAIServer

Serve = Callable[..., Service]
DEAD = "http://127.0.0.1:9/v1"


def balanced(endpoints: list[dict[str, Any]], flagship: str) -> triagegate.Pipeline:
    return triagegate.load(
        LOOPBACK,
        environ={
            "TRIAGEGATE_MINI": json.dumps({"endpoints": endpoints}),
            "TRIAGEGATE_FLAGSHIP_BASE_URL": flagship,
        },
    )


def test_answers_are_counted_per_endpoint(serve: Serve, openai_server: OpenAIServer) -> None:
    with OpenAIServer() as second:
        endpoints = [{"base_url": openai_server.base_url}, {"base_url": second.base_url, "weight": 3}]
        pipeline = balanced(endpoints, openai_server.base_url)
        openai_server.code_confidence = second.code_confidence = 0.99
        client = serve(pipeline).client
        for n in range(8):
            outcome = client.post("/v1/tickets", json={"text": f"I was charged twice ({n})"}).json()
            assert outcome["route"] == "mini"
        text = client.get("/metrics").text
    first_name, second_name = (f"mini@127.0.0.1:{s.port}" for s in (openai_server, second))
    line = 'triagegate_model_endpoint_answers_total{{endpoint="{}",model="mini"}}'
    assert metric(text, line.format(first_name)) == 2
    assert metric(text, line.format(second_name)) == 6


def test_a_balanced_alias_is_ready_while_one_endpoint_answers(
    serve: Serve, openai_server: OpenAIServer
) -> None:
    client = serve(
        balanced([{"base_url": openai_server.base_url}, {"base_url": DEAD}], openai_server.base_url)
    ).client
    ready = client.get("/readyz")
    assert ready.status_code == 200
    mini = ready.json()["models"]["mini"]
    assert mini["ready"] is True
    assert mini["detail"].startswith(f"1 of 2 endpoints ready ({DEAD}: unreachable")
    down = serve(
        balanced([{"base_url": DEAD}, {"base_url": "http://127.0.0.1:7/v1"}], openai_server.base_url)
    ).client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["models"]["mini"]["detail"].startswith("0 of 2 endpoints ready")
