"""The service counts triage replies that lacked their log-probabilities and replies whose token
counts were replaced, end to end: the service, its pipeline and the loopback OpenAI server."""

from __future__ import annotations

import json
from collections.abc import Callable

import triagegate
from tests.serve.conftest import LOOPBACK, Service
from tests.support.openai_server import OpenAIServer, Reply

Serve = Callable[..., Service]


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics:\n{text}")


def test_fallbacks_and_distrusted_token_counts_are_counted(serve: Serve, openai_server: OpenAIServer) -> None:
    openai_server.logprobs_mode = "omit"
    reply = {
        "category": "A",
        "priority": "normal",
        "complexity": "low",
        "needs_vision": False,
        "answer": "Refunded.",
        "confidence": 0.9,
    }
    openai_server.script("mini-model", Reply(json.dumps(reply), usage=(10**30, 4)))
    pipeline = triagegate.load(
        LOOPBACK,
        environ={
            "TRIAGEGATE_MINI_BASE_URL": openai_server.base_url,
            "TRIAGEGATE_FLAGSHIP_BASE_URL": openai_server.base_url,
        },
    )
    client = serve(pipeline).client
    for text in ("I was charged twice", "Where is my invoice?"):
        outcome = client.post("/v1/tickets", json={"text": text}).json()
        assert outcome["confidence_fallback"] == "no_logprobs"
        assert "logprobs_missing" in outcome["escalation_reasons"]
    text = client.get("/metrics").text
    assert metric(text, 'triagegate_confidence_fallbacks_total{reason="no_logprobs"}') == 2
    assert metric(text, 'triagegate_escalations_total{reason="logprobs_missing"}') == 2
    assert (
        metric(
            text,
            'triagegate_model_reply_warnings_total{model="mini",warning="usage_out_of_bounds:prompt_tokens"}',
        )
        == 1
    )
