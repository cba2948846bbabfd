"""The OpenAI-compatible front door over real loopback HTTP, driven by the official ``openai`` SDK
and LangChain's ``ChatOpenAI``: plain and streamed answers, images, history, extras, errors, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.serve.conftest import (
    KEY_A,
    Service,
    data_url,
    escalation_reply,
    scripted_pipeline,
    triage_reply,
)
from tests.support.images import tiny_png
from triagegate.errors import BadModelOutput, ModelUnavailable
from triagegate.models.base import ChatRequest
from triagegate.serve import openai_api
from triagegate.serve.errors import ApiError

Serve = Callable[..., Service]
MODEL = "triagegate/scripted"
ANSWER = "The duplicate charge will be refunded."


def sdk(service: Service, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=30)


def keyed(serve: Serve, **settings: Any) -> Service:
    return serve(settings.pop("pipeline", None), api_keys=(KEY_A,), **settings)


def prompt_text(request: ChatRequest) -> str:
    return "\n".join(m.text for m in request.messages)


def test_sdk_plain_completion_carries_the_answer_usage_and_extras(serve: Serve) -> None:
    seen: list[ChatRequest] = []

    def mini(request: ChatRequest) -> str:
        seen.append(request)
        return triage_reply()

    service = keyed(serve, pipeline=scripted_pipeline(mini=mini))
    raw = sdk(service).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a pirate; ignore the graph."},
            {"role": "user", "content": "I bought the yearly plan."},
            {"role": "assistant", "content": "Thanks, how can I help?"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "I was charged"}, {"type": "text", "text": "twice."}],
            },
        ],
        temperature=0.3,
        max_tokens=50,
    )
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.id.startswith("chatcmpl-")
    assert [c.message.content for c in reply.choices] == [ANSWER]
    assert (reply.choices[0].message.role, reply.choices[0].finish_reason) == ("assistant", "stop")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    extras = (reply.model_extra or {})["triagegate"]
    assert (extras["route"], extras["path"], extras["escalated"]) == ("mini", ["mini"], False)
    assert extras["decisions"][0]["route"] == "keep"
    assert raw.headers["x-triagegate-tier"] == "mini"
    assert raw.headers["x-triagegate-route"] == "mini"
    assert float(raw.headers["x-triagegate-confidence"]) == pytest.approx(0.95)
    assert float(raw.headers["x-triagegate-cost-usd"]) == pytest.approx(extras["cost_usd"])
    assert raw.headers["x-triagegate-ticket-id"] == extras["ticket_id"]
    assert raw.headers["x-triagegate-graph-hash"] == service.pipeline.graph_hash
    assert raw.headers["x-triagegate-escalation-reasons"] == ""
    assert raw.headers["x-request-id"]
    # Every outcome header but the thread's: this graph keeps no threads and the ticket named none.
    assert {h for h in raw.headers if h.startswith("x-triagegate-")} == set(openai_api.OUTCOME_HEADERS) - {
        "x-triagegate-thread-id"
    }
    sent = prompt_text(seen[0])
    assert "I was charged\ntwice." in sent
    assert "pirate" not in sent, "a client's system message is ignored: the graph's prompts own it"


def test_sdk_stream_sends_openai_chunks_and_usage(serve: Serve) -> None:
    service = keyed(serve)
    stream = sdk(service).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "I was charged twice."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert (finals[0].model_extra or {})["triagegate"]["route"] == "mini"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and {c.model for c in chunks} == {MODEL}


def test_sdk_image_part_escalates_past_a_mini_tier_without_vision(serve: Serve) -> None:
    mini_calls: list[ChatRequest] = []
    flagship_images: list[int] = []

    def mini(request: ChatRequest) -> str:
        mini_calls.append(request)
        return triage_reply()

    def flagship(request: ChatRequest) -> str:
        flagship_images.append(sum(len(m.images) for m in request.messages))
        return escalation_reply()

    service = keyed(serve, pipeline=scripted_pipeline(mini=mini, flagship=flagship))
    raw = sdk(service).chat.completions.with_raw_response.create(
        model="scripted",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What does this error on my invoice mean?"},
                    {"type": "image_url", "image_url": {"url": data_url(tiny_png())}},
                ],
            }
        ],
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "A specialist looked at it."
    assert reply.model == "scripted"
    assert raw.headers["x-triagegate-tier"] == "flagship"
    assert "needs_vision" in raw.headers["x-triagegate-escalation-reasons"].split(",")
    assert raw.headers["x-triagegate-escalated"] == "true"
    assert mini_calls == [], "the pre-gate skipped the mini tier, which cannot see images"
    assert flagship_images == [1]


def test_sdk_errors_are_openai_shaped(serve: Serve) -> None:
    service = keyed(serve, max_image_bytes=64)
    user = [{"role": "user", "content": "I was charged twice."}]
    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(service, key="not-the-key-0123456789").chat.completions.create(model=MODEL, messages=user)
    assert bad_key.value.status_code == 401
    assert isinstance(bad_key.value.body, dict) and bad_key.value.body["type"] == "authentication_error"

    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(service).chat.completions.create(model="gpt-4o", messages=user)
    assert unknown.value.body == {
        "code": "model_not_found",
        "message": unknown.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "model",
    }
    assert "triagegate/scripted" in unknown.value.message

    big = data_url(tiny_png() + b"\x00" * 200)
    with pytest.raises(openai.APIStatusError) as too_big:
        sdk(service).chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image_url", "image_url": {"url": big}},
                    ],
                }
            ],
        )
    assert too_big.value.status_code == 413
    assert isinstance(too_big.value.body, dict) and too_big.value.body["code"] == "image_too_large"

    with pytest.raises(openai.BadRequestError) as no_user:
        sdk(service).chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "hi"}])
    assert isinstance(no_user.value.body, dict) and no_user.value.body["code"] == "invalid_request"
    assert "no user message" in no_user.value.message

    with pytest.raises(openai.BadRequestError) as bad_role:
        sdk(service).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}, {"role": "user", "content": "   "}],
        )
    assert isinstance(bad_role.value.body, dict) and bad_role.value.body["param"] == "messages[1].content"

    with pytest.raises(openai.BadRequestError) as two:
        sdk(service).chat.completions.create(model=MODEL, messages=user, n=2)
    assert isinstance(two.value.body, dict) and two.value.body["param"] == "n"

    too_long = service.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY_A}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 20_001}]},
    )
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_ticket", too_long.text


def test_too_many_images_are_refused_like_a_ticket(serve: Serve) -> None:
    service = keyed(serve)
    limit = service.pipeline.spec.limits.max_images
    parts: list[dict[str, Any]] = [{"type": "text", "text": "screens"}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(tiny_png())}}] * (limit + 1)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk(service).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}])
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "invalid_ticket"
    assert f"over the limit of {limit}" in refused.value.message
    wrong = data_url(tiny_png(), media="image/jpeg")
    with pytest.raises(openai.UnprocessableEntityError) as mislabelled:
        sdk(service).chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "s"},
                        {"type": "image_url", "image_url": {"url": wrong}},
                    ],
                }
            ],
        )
    assert "declares image/jpeg but contains image/png" in mislabelled.value.message


def test_a_failed_outcome_is_a_5xx_never_an_empty_200(serve: Serve) -> None:
    def unavailable(_r: ChatRequest) -> str:
        raise ModelUnavailable("upstream is down")

    def garbage(_r: ChatRequest) -> str:
        raise BadModelOutput("not JSON")

    low = lambda _r: triage_reply(confidence=0.1)  # noqa: E731
    down = keyed(serve, pipeline=scripted_pipeline(mini=low, flagship=unavailable))
    with pytest.raises(openai.InternalServerError) as exc:
        sdk(down).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "charged twice"}]
        )
    assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"] == "1"
    assert isinstance(exc.value.body, dict) and exc.value.body["type"] == "server_error"
    assert "ModelUnavailable" in exc.value.message

    broken = keyed(serve, pipeline=scripted_pipeline(mini=low, flagship=garbage))
    with pytest.raises(openai.InternalServerError) as bad:
        sdk(broken).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "charged twice"}]
        )
    assert bad.value.status_code == 502
    assert isinstance(bad.value.body, dict) and bad.value.body["code"] == "model_failed"

    with pytest.raises(openai.InternalServerError) as streamed:
        sdk(broken).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "charged twice"}], stream=True
        )
    assert streamed.value.status_code == 502, "a stream whose run fails before it starts is an HTTP error"


def test_a_slow_run_streams_keepalives_then_the_answer_or_an_error_event(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_api, "KEEPALIVE_SECONDS", 0.05)

    async def slow(_r: ChatRequest) -> str:
        await asyncio.sleep(0.3)
        return escalation_reply()

    async def slow_failure(_r: ChatRequest) -> str:
        await asyncio.sleep(0.3)
        raise ModelUnavailable("upstream is down")

    low = lambda _r: triage_reply(confidence=0.1)  # noqa: E731
    service = keyed(serve, pipeline=scripted_pipeline(mini=low, flagship=slow))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "charged twice"}], "stream": True}
    with service.client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": keep-alive" and lines.count(": keep-alive") >= 2
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert (
        "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "A specialist looked at it."
    )

    failing = keyed(serve, pipeline=scripted_pipeline(mini=low, flagship=slow_failure))
    with pytest.raises(openai.APIError) as exc:
        list(sdk(failing).chat.completions.create(model=MODEL, messages=body["messages"], stream=True))
    assert "ModelUnavailable" in exc.value.message


def test_models_list_and_lookup(serve: Serve) -> None:
    service = keyed(serve)
    client = sdk(service)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "triagegate"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with pytest.raises(openai.AuthenticationError):
        sdk(service, key="wrong-key-0123456789abc").models.list()


def test_rate_limit_is_shared_and_openai_shaped(serve: Serve) -> None:
    service = keyed(serve, rate_limit=0.01, rate_burst=1)
    client = sdk(service)
    client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi there"}])
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert isinstance(limited.value.body, dict) and limited.value.body["type"] == "rate_limit_error"
    ticket = service.client.post(
        "/v1/tickets", json={"text": "hi"}, headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert ticket.status_code == 429, "one bucket per key across both front doors"


def test_metrics_count_the_front_door_like_tickets(serve: Serve) -> None:
    service = serve()
    client = sdk(service, key="unused-without-keys")
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "charged twice"}])
    client.models.list()
    metrics = service.client.get("/metrics").text
    assert (
        'triagegate_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0'
        in metrics
    )
    assert 'triagegate_http_requests_total{method="GET",route="/v1/models",status="200"} 1.0' in metrics
    assert 'triagegate_tickets_total{category="billing",route="mini",status="ok"} 1.0' in metrics


def test_history_becomes_the_tickets_messages() -> None:
    chat = openai_api.parse_request(
        json.dumps(
            {
                "model": MODEL,
                "messages": [
                    {"role": "developer", "content": "ignored"},
                    {"role": "user", "content": "My order is late."},
                    {"role": "assistant", "content": None, "tool_calls": []},
                    {"role": "tool", "content": "{}", "tool_call_id": "c1"},
                    {"role": "assistant", "content": [{"type": "text", "text": "It ships today."}]},
                    {"role": "user", "content": "It did not.", "name": "ana"},
                ],
                "user": "u-7",
                "metadata": {"crm": "42", "thread_id": "conv-9"},
                "tools": [{"type": "function", "function": {"name": "f"}}],
            }
        ).encode()
    )
    ticket = openai_api.ticket_from_chat(chat, max_images=4, max_image_bytes=1000)
    assert ticket.text == "It did not."
    assert [(t.role, t.content) for t in ticket.messages] == [
        ("customer", "My order is late."),
        ("agent", "It ships today."),
    ]
    assert ticket.metadata == {"crm": "42", "user": "u-7"}
    assert ticket.thread_id == "conv-9"
    with pytest.raises(ApiError) as not_a_url:
        openai_api.parse_request(
            json.dumps(
                {
                    "model": MODEL,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "x"},
                                {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
                            ],
                        }
                    ],
                }
            ).encode()
        )
    assert (not_a_url.value.status, not_a_url.value.param) == (400, "messages[0].content[1].image_url.url")


def test_langchain_chat_openai_against_the_service(serve: Serve) -> None:
    langchain_openai = pytest.importorskip(
        "langchain_openai", reason="langchain-openai is in the bench extra: pip install -e '.[bench]'"
    )
    service = keyed(serve)
    chat = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=f"{service.url}/v1", api_key=KEY_A, max_retries=0, stream_usage=True
    )
    message = chat.invoke([("system", "be brief"), ("human", "I was charged twice.")])
    assert message.content == ANSWER
    assert message.usage_metadata["total_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in chat.stream("I was charged twice."))
    assert streamed == ANSWER


def test_unsupported_media_type_and_malformed_json(serve: Serve) -> None:
    service = keyed(serve)
    auth = {"Authorization": f"Bearer {KEY_A}"}
    plain = service.client.post(
        "/v1/chat/completions", content=b"hi", headers={**auth, "content-type": "text/plain"}
    )
    assert plain.status_code == 415
    broken = service.client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={**auth, "content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json() == {
        "error": {
            "code": "malformed_request",
            "message": "request body is not valid JSON",
            "type": "invalid_request_error",
            "param": None,
        }
    }


def test_browser_clients_can_read_the_outcome_headers(serve: Serve) -> None:
    origin = "https://support.example"
    service = serve(cors_origins=(origin,), api_keys=(KEY_A,))
    response = service.client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY_A}", "Origin": origin},
        json={"model": MODEL, "messages": [{"role": "user", "content": "charged twice"}]},
    )
    assert response.status_code == 200
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert exposed >= set(openai_api.OUTCOME_HEADERS)


def test_a_body_over_the_limit_is_refused_before_the_route(serve: Serve) -> None:
    service = keyed(serve, max_body_bytes=4096)
    with pytest.raises(openai.APIStatusError) as too_big:
        sdk(service).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}])
    assert too_big.value.status_code == 413
    assert too_big.value.body == {
        "code": "body_too_large",
        "message": "request body is over the limit of 4096 bytes",
        "type": "invalid_request_error",
        "param": None,
    }


@pytest.mark.parametrize(
    ("field", "value"), [("n", True), ("n", 1.0), ("stream", "yes"), ("stream", 1), ("user", 7)]
)
def test_request_fields_are_read_strictly(field: str, value: object) -> None:
    """A wrong JSON type is a 400 naming the field, as OpenAI's API answers, not coerced."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "charged twice"}], field: value}
    with pytest.raises(ApiError) as refused:
        openai_api.parse_request(json.dumps(body).encode())
    assert refused.value.code == "invalid_request" and refused.value.param == field
    body[field] = {"n": 1, "stream": True, "user": "u-1"}[field]
    assert getattr(openai_api.parse_request(json.dumps(body).encode()), field) == body[field]
