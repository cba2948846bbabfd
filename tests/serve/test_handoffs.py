"""``/v1/handoffs`` over real HTTP: listing, showing and resuming, behind the API keys, and a
service killed with SIGKILL that comes back with every pending handoff listed and resumable."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import triagegate
from tests.serve.conftest import KEY_A, Service, error_code
from tests.support.openai_server import OpenAIServer
from tests.support.serve_process import ServeProcess

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
HANDOFF = GRAPHS / "handoff_openai.yaml"
AUTH = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def unsure_server() -> Iterator[OpenAIServer]:
    """Every triage at confidence 0.5: the mini tier escalates and the flagship's answer is handed off."""
    with OpenAIServer(code_confidence=0.5) as server:
        yield server


def handoff_pipeline(server: OpenAIServer, tmp_path: Path) -> triagegate.Pipeline:
    """The handoff graph on ``server``, checkpointing to SQLite under ``tmp_path``."""
    return triagegate.load(
        HANDOFF,
        environ={
            "TRIAGEGATE_MINI_BASE_URL": server.base_url,
            "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url,
        },
        checkpoints=tmp_path / "checkpoints.sqlite",
        cache_dir=tmp_path,
    )


def test_pending_handoffs_are_listed_shown_and_resumed_once_behind_the_keys(
    serve: Callable[..., Service], unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    pipeline = handoff_pipeline(unsure_server, tmp_path)
    client = serve(pipeline, api_keys=(KEY_A,)).client
    paused = client.post("/v1/tickets", json={"id": "H-1", "text": "I was charged twice."}, headers=AUTH)
    assert paused.status_code == 200
    assert paused.json()["status"] == "awaiting_human" and paused.json()["thread_id"] == "H-1"

    assert client.get("/v1/handoffs").status_code == 401
    assert client.post("/v1/handoffs/H-1", json={"action": "approve"}).status_code == 401

    assert client.get("/v1/handoffs", params={"limit": 0}, headers=AUTH).status_code == 422
    listed = client.get("/v1/handoffs", headers=AUTH).json()["handoffs"]
    assert [h["thread_id"] for h in listed] == ["H-1"]
    shown = client.get("/v1/handoffs/H-1", headers=AUTH).json()
    assert shown["status"] == "pending" and shown["outcome"]["handoff"]["draft"] == "auto answer"
    assert shown["ticket"]["text"] == "I was charged twice."

    bad = client.post("/v1/handoffs/H-1", json={"action": "edit"}, headers=AUTH)
    assert bad.status_code == 422 and error_code(bad) == "invalid_answer"

    calls = unsure_server.count
    done = client.post(
        "/v1/handoffs/H-1", json={"action": "edit", "text": "Refunded today.", "by": "ana"}, headers=AUTH
    )
    assert done.status_code == 200
    body = done.json()
    assert body["route"] == "human" and body["answer"] == "Refunded today."
    assert body["handoff"]["diff"].startswith("--- draft")
    assert unsure_server.count == calls

    again = client.post("/v1/handoffs/H-1", json={"action": "answer", "text": "Other."}, headers=AUTH)
    assert again.status_code == 409 and error_code(again) == "handoff_resolved"
    assert client.get("/v1/handoffs/H-1", headers=AUTH).json()["outcome"]["answer"] == "Refunded today."
    missing = client.post("/v1/handoffs/none-such", json={"action": "approve"}, headers=AUTH)
    assert missing.status_code == 404 and error_code(missing) == "handoff_not_found"
    assert client.get("/v1/handoffs/none-such", headers=AUTH).status_code == 404
    assert client.get("/v1/handoffs", headers=AUTH).json()["handoffs"] == []
    assert len(client.get("/v1/handoffs?status=resolved", headers=AUTH).json()["handoffs"]) == 1


def test_the_front_door_answers_a_handoff_423_with_its_thread_and_continues_the_thread_by_metadata(
    serve: Callable[..., Service], unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    """A handed-off chat request is 423 ``awaiting_human`` naming its thread: the official SDK
    raises it without retrying (each retry would be a new ticket, and a new handoff), and the
    conversation goes on on that thread through ``metadata.thread_id`` once a person answered."""
    import openai

    pipeline = handoff_pipeline(unsure_server, tmp_path)
    service = serve(pipeline, api_keys=(KEY_A,))
    sdk = openai.OpenAI(base_url=f"{service.url}/v1", api_key=KEY_A, max_retries=3)
    with pytest.raises(openai.APIStatusError) as paused:
        sdk.chat.completions.create(
            model="triagegate/handoff",
            messages=[{"role": "user", "content": "I was charged twice."}],
        )
    assert paused.value.status_code == 423
    thread = paused.value.response.headers["x-triagegate-thread-id"]
    error = paused.value.response.json()["error"]
    assert error["code"] == "awaiting_human" and f"GET /v1/handoffs/{thread}" in error["message"]
    listed = service.client.get("/v1/handoffs", headers=AUTH).json()["handoffs"]
    assert [h["thread_id"] for h in listed] == [thread]

    def say(text: str) -> httpx.Response:
        return service.client.post(
            "/v1/chat/completions",
            json={
                "model": "triagegate/handoff",
                "messages": [{"role": "user", "content": text}],
                "metadata": {"thread_id": thread, "crm": "42"},
            },
            headers=AUTH,
        )

    waiting = say("Any news?")
    assert waiting.status_code == 422 and "waiting for a person" in waiting.json()["error"]["message"]
    done = service.client.post(
        f"/v1/handoffs/{thread}", json={"action": "edit", "text": "Refunded today."}, headers=AUTH
    )
    assert done.status_code == 200

    again = say("Thanks, and when does the refund reach my card?")
    assert again.status_code == 423 and again.headers["x-triagegate-thread-id"] == thread
    shown = service.client.get(f"/v1/handoffs/{thread}", headers=AUTH).json()
    assert shown["status"] == "pending"
    assert shown["ticket"]["metadata"] == {"crm": "42"}
    assert [(t["role"], t["content"]) for t in shown["ticket"]["messages"]] == [
        ("customer", "I was charged twice."),
        ("agent", "Refunded today."),
    ]

    bad = service.client.post(
        "/v1/chat/completions",
        json={
            "model": "handoff",
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"thread_id": "a b"},
        },
        headers=AUTH,
    )
    assert bad.status_code == 400 and error_code(bad) == "invalid_request"
    assert bad.json()["error"]["param"] == "metadata.thread_id"


@pytest.mark.slow
def test_a_service_killed_with_50_pending_handoffs_lists_and_resumes_all_50_after_a_restart(
    unsure_server: OpenAIServer, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints.sqlite"

    def start() -> ServeProcess:
        return ServeProcess(
            HANDOFF,
            unsure_server.base_url,
            env={"TRIAGEGATE_API_KEYS": KEY_A, "TRIAGEGATE_CHECKPOINTS": str(checkpoints)},
            stderr=subprocess.DEVNULL,
        )

    first = start()
    try:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=30) as client:

            def post(i: int) -> str:
                reply = client.post(
                    "/v1/tickets", json={"id": f"P-{i:02d}", "text": f"Charged twice, order {i}."}
                )
                assert reply.status_code == 200, reply.text
                status: str = reply.json()["status"]
                return status

            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(post, range(50)))
        assert statuses == ["awaiting_human"] * 50
    finally:
        first.stop()
    assert first.proc.returncode == -9

    calls = unsure_server.count
    second = start()
    try:
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=30) as client:
            listed = client.get("/v1/handoffs", params={"limit": 100}).json()["handoffs"]
            assert sorted(h["thread_id"] for h in listed) == [f"P-{i:02d}" for i in range(50)]
            for record in listed:
                done = client.post(f"/v1/handoffs/{record['thread_id']}", json={"action": "approve"})
                assert done.status_code == 200, done.text
                assert done.json()["route"] == "human"
                assert done.json()["path"] == ["mini", "flagship", "human"]
            assert client.get("/v1/handoffs").json()["handoffs"] == []
    finally:
        second.stop()
    assert unsure_server.count == calls
