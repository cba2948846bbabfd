"""The HTTP API over real loopback HTTP: tickets, batches, uploads, probes, errors and request ids."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from tests.serve.conftest import (
    Service,
    data_url,
    error_code,
    escalation_reply,
    scripted_pipeline,
    triage_reply,
)
from tests.support.images import tiny_png
from triagegate.errors import ModelUnavailable
from triagegate.models.base import ChatRequest

Serve = Callable[..., Service]


def test_post_ticket_returns_its_outcome(serve: Serve) -> None:
    service = serve()
    response = service.client.post("/v1/tickets", json={"id": "t-1", "text": "I was charged twice."})
    assert response.status_code == 200
    outcome = response.json()
    assert outcome["ticket_id"] == "t-1"
    assert (outcome["status"], outcome["route"], outcome["category"]) == ("ok", "mini", "billing")
    assert outcome["graph"] == "scripted"
    assert outcome["graph_hash"] == service.pipeline.graph_hash
    assert outcome["path"] == ["mini"]
    assert outcome["decisions"] == [
        {"tier": "mini", "route": "keep", "confidence": 0.95, "threshold": 0.7, "reasons": []}
    ]


def test_request_id_is_echoed_or_generated(serve: Serve) -> None:
    service = serve()
    given = service.client.get("/healthz", headers={"X-Request-ID": "req-42.a:b"})
    assert given.headers["x-request-id"] == "req-42.a:b"
    made = service.client.post("/v1/tickets", json={"text": "hello"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    junk = service.client.get("/healthz", headers={"X-Request-ID": "has spaces and <tags>"})
    assert re.fullmatch(r"[0-9a-f]{32}", junk.headers["x-request-id"])
    error = service.client.post(
        "/v1/tickets", content=b"{", headers={"content-type": "application/json", "X-Request-ID": "e-1"}
    )
    assert error.headers["x-request-id"] == "e-1"


def test_bad_input_is_422_with_a_stable_code(serve: Serve) -> None:
    client = serve().client
    cases = [
        {"text": "   "},
        {"subject": "no text"},
        {"text": "x", "unknown": 1},
        {"text": "x", "attachments": [{"url": "ftp://example.invalid/a.png"}]},
        {"text": "x", "attachments": [{"path": "/etc/passwd"}]},
        {"text": "x" * 20_001},
    ]
    for body in cases:
        response = client.post("/v1/tickets", json=body)
        assert response.status_code == 422, (body, response.text)
        assert error_code(response) == "invalid_ticket"
    assert "not accepted over HTTP" in client.post("/v1/tickets", json=cases[4]).json()["error"]["message"]


def test_malformed_body_and_wrong_media_type(serve: Serve) -> None:
    client = serve().client
    broken = client.post("/v1/tickets", content=b'{"text": ', headers={"content-type": "application/json"})
    assert (broken.status_code, error_code(broken)) == (400, "malformed_request")
    plain = client.post("/v1/tickets", content=b"text=hi", headers={"content-type": "text/plain"})
    assert (plain.status_code, error_code(plain)) == (415, "unsupported_media_type")
    missing = client.get("/v1/nothing")
    assert (missing.status_code, error_code(missing)) == (404, "not_found")
    wrong_method = client.get("/v1/tickets")
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "method_not_allowed")
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/tickets", "/v1/tickets:batch"):
        nested = client.post(path, content=deep, headers={"content-type": "application/json"})
        assert (nested.status_code, error_code(nested)) == (400, "malformed_request"), path


def test_data_url_image_reaches_the_vision_model(serve: Serve) -> None:
    seen: list[ChatRequest] = []

    def flagship(request: ChatRequest) -> str:
        seen.append(request)
        return escalation_reply()

    service = serve(scripted_pipeline(flagship=flagship))
    body = {"text": "The screen shows this error", "attachments": [{"url": data_url(tiny_png())}]}
    response = service.client.post("/v1/tickets", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["route"] == "flagship"
    images = [part.url for message in seen[0].messages for part in message.images]
    assert images == [data_url(tiny_png())]


def test_multipart_upload_becomes_an_attachment(serve: Serve) -> None:
    seen: list[ChatRequest] = []

    def flagship(request: ChatRequest) -> str:
        seen.append(request)
        return escalation_reply()

    service = serve(scripted_pipeline(flagship=flagship))
    response = service.client.post(
        "/v1/tickets",
        data={"text": "See the screenshot", "subject": "Broken", "id": "up-1"},
        files=[("images", ("shot.bin", tiny_png(), "application/octet-stream"))],
    )
    assert response.status_code == 200, response.text
    assert response.json()["ticket_id"] == "up-1"
    images = [part.url for message in seen[0].messages for part in message.images]
    assert images == [data_url(tiny_png())], "the type comes from the bytes, not the declared one"


def test_multipart_rejects_non_images_and_unknown_fields(serve: Serve) -> None:
    client = serve().client
    not_image = client.post(
        "/v1/tickets", data={"text": "x"}, files=[("images", ("a.png", b"GIF? no", "image/png"))]
    )
    assert (not_image.status_code, error_code(not_image)) == (422, "invalid_ticket")
    extra = client.post("/v1/tickets", data={"text": "x", "priority": "urgent"})
    assert (extra.status_code, error_code(extra)) == (422, "invalid_ticket")
    no_text = client.post("/v1/tickets", files=[("images", ("a.png", tiny_png(), "image/png"))])
    assert (no_text.status_code, error_code(no_text)) == (422, "invalid_ticket")


def test_batch_answers_in_order_with_bad_items_failed(serve: Serve) -> None:
    def mini(request: ChatRequest) -> str:
        text = request.messages[-1].text
        return triage_reply("B" if "parcel" in text else "A")

    service = serve(scripted_pipeline(mini=mini), max_batch=4)
    tickets = [
        {"id": "b-1", "text": "charged twice"},
        {"id": "b-2", "txt": "typo in the field name"},
        {"id": "b-3", "text": "where is my parcel"},
        {"id": "b-4", "text": "x", "attachments": [{"path": "/etc/hostname"}]},
    ]
    response = service.client.post("/v1/tickets:batch", json={"tickets": tickets})
    assert response.status_code == 200, response.text
    outcomes = response.json()["outcomes"]
    assert [o["ticket_id"] for o in outcomes] == ["b-1", "b-2", "b-3", "b-4"]
    assert [o["status"] for o in outcomes] == ["ok", "failed", "ok", "failed"]
    assert [o["category"] for o in outcomes[::2]] == ["billing", "shipping"]
    assert "tickets[1].text" in outcomes[1]["errors"][0]


def test_failed_batch_items_without_an_id_still_get_one(serve: Serve) -> None:
    """Regression: an invalid item without an id came back with ticket_id ''."""
    response = serve().client.post("/v1/tickets:batch", json={"tickets": [{"txt": "a"}, {"txt": "b"}]})
    ids = [o["ticket_id"] for o in response.json()["outcomes"]]
    assert all(ids) and len(set(ids)) == 2, ids


def test_batch_limits_and_shape(serve: Serve) -> None:
    client = serve(max_batch=2).client
    too_many = client.post("/v1/tickets:batch", json={"tickets": [{"text": "a"}] * 3})
    # 422, not 413: more items than the document's maxItems is a validation failure like any other.
    assert (too_many.status_code, error_code(too_many)) == (422, "batch_too_large")
    not_a_batch = client.post("/v1/tickets:batch", json=[{"text": "a"}])
    assert (not_a_batch.status_code, error_code(not_a_batch)) == (422, "invalid_ticket")
    not_objects = client.post("/v1/tickets:batch", json={"tickets": [{"text": "a"}, [None, None]]})
    assert (not_objects.status_code, error_code(not_objects)) == (422, "invalid_ticket")
    assert "tickets[1]" in not_objects.json()["error"]["message"]
    empty = client.post("/v1/tickets:batch", json={"tickets": []})
    assert empty.status_code == 200 and empty.json() == {"outcomes": []}


def test_model_failure_is_a_failed_outcome_not_an_http_error(serve: Serve) -> None:
    def down(_request: ChatRequest) -> str:
        raise ModelUnavailable("flagship answered 503", model="flagship-model", status=503)

    service = serve(scripted_pipeline(mini=lambda _r: triage_reply("C"), flagship=down))
    response = service.client.post("/v1/tickets", json={"text": "my account was hacked"})
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["route"]) == ("failed", "flagship")


def test_unexpected_exception_is_500_without_internals(serve: Serve) -> None:
    def broken(_request: ChatRequest) -> str:
        raise RuntimeError("secret internal detail")

    service = serve(scripted_pipeline(mini=broken))
    response = service.client.post("/v1/tickets", json={"text": "hello"})
    assert (response.status_code, error_code(response)) == (500, "internal_error")
    assert "secret internal detail" not in response.text
    assert response.headers["x-request-id"]


def test_healthz_and_readyz_with_embedded_models(serve: Serve) -> None:
    client = serve().client
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    report = ready.json()
    assert report["status"] == "ready"
    assert report["models"]["mini"] == {"ready": True, "backend": "scripted", "detail": "embedded"}


def test_cors_is_off_by_default_and_on_when_asked(serve: Serve) -> None:
    preflight = {
        "Origin": "https://support.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    off = serve().client
    assert "access-control-allow-origin" not in off.options("/v1/tickets", headers=preflight).headers
    on = serve(cors_origins=("https://support.example",), api_keys=("k" * 20,)).client
    answer = on.options("/v1/tickets", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://support.example"
    denied = on.post("/v1/tickets", json={"text": "x"}, headers={"Origin": "https://support.example"})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://support.example"


def test_metrics_count_requests_routes_escalations_tokens_and_errors(serve: Serve) -> None:
    def flagship(request: ChatRequest) -> str:
        if "hacked" in request.messages[-1].text:
            raise ModelUnavailable("flagship answered 503", model="flagship-model", status=503)
        return escalation_reply()

    def mini(request: ChatRequest) -> str:
        text = request.messages[-1].text
        if "hacked" in text or "security" in text:
            return triage_reply("C")
        return triage_reply("A", confidence=0.3 if "unsure" in text else 0.95)

    service = serve(scripted_pipeline(mini=mini, flagship=flagship))
    client = service.client
    for text in ("charged twice", "unsure what this is", "I was hacked"):
        assert client.post("/v1/tickets", json={"text": text}).status_code == 200
    client.post("/v1/tickets", json={"text": " "})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text

    def value(line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{line_start} not in metrics:\n{text}")

    assert value('triagegate_http_requests_total{method="POST",route="/v1/tickets",status="200"}') == 3
    assert value('triagegate_http_requests_total{method="POST",route="/v1/tickets",status="422"}') == 1
    assert value('triagegate_tickets_total{category="billing",route="mini",status="ok"}') == 1
    assert value('triagegate_tickets_total{category="billing",route="flagship",status="ok"}') == 1
    assert value('triagegate_escalations_total{reason="low_confidence"}') == 1
    assert value('triagegate_escalations_total{reason="category:security"}') == 1
    assert value('triagegate_node_duration_seconds_count{node="mini"}') == 3
    assert value('triagegate_gate_decisions_total{route="keep",tier="mini"}') == 1
    assert value('triagegate_gate_decisions_total{route="escalate",tier="mini"}') == 2
    assert value('triagegate_model_tokens_total{direction="input",model="mini"}') > 0
    assert value('triagegate_model_cost_usd_total{model="flagship"}') > 0
    assert value('triagegate_provider_errors_total{model="flagship",node="flagship"}') == 1
    assert value('triagegate_http_request_duration_seconds_count{route="/v1/tickets"}') == 4


def test_unknown_paths_share_one_metrics_label(serve: Serve) -> None:
    client = serve().client
    for n in range(3):
        client.get(f"/random/{n}")
    text = client.get("/metrics").text
    assert 'route="other"' in text
    assert "/random/" not in text


def test_structured_log_lines_carry_the_request_id(serve: Serve) -> None:
    import io
    import json
    import time

    import structlog

    from triagegate import log

    stream = io.StringIO()
    saved = structlog.get_config()
    log.configure("INFO", json=True, stream=stream)
    try:
        client = serve().client
        response = client.post("/v1/tickets", json={"text": "hello"}, headers={"X-Request-ID": "trace-me"})
        assert response.status_code == 200

        def mine() -> set[str]:
            events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
            return {e["event"] for e in events if e.get("request_id") == "trace-me"}

        deadline = time.monotonic() + 5
        while "http_request" not in mine() and time.monotonic() < deadline:
            time.sleep(0.01)  # the access line is written just after the response is sent
    finally:
        structlog.configure(**saved)
    assert {"ticket_done", "http_request"} <= mine()


def test_openapi_documents_paths_and_schemas(serve: Serve) -> None:
    doc = serve(api_keys=("k" * 20,)).client.get("/openapi.json").json()
    assert {"/v1/tickets", "/v1/tickets:batch", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {
        "Ticket",
        "Attachment",
        "Outcome",
        "NodeRun",
        "BatchRequest",
        "ErrorResponse",
        "TicketUpload",
    } <= set(schemas)
    assert schemas["Ticket"]["required"] == ["text"]
    assert {"ticket_id", "route", "status", "escalation_reasons"} <= set(schemas["Outcome"]["properties"])
    post = doc["paths"]["/v1/tickets"]["post"]
    content = post["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Ticket"}
    assert "multipart/form-data" in content
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Outcome"
    }
    assert {"401", "413", "422", "429"} <= set(post["responses"])
    assert post["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_http_client_can_reuse_connections(serve: Serve) -> None:
    service = serve()
    with httpx.Client(base_url=service.url) as client:
        for _ in range(5):
            assert client.post("/v1/tickets", json={"text": "hello"}).status_code == 200
