"""Bearer API keys: 401s, constant-time comparison, key sources, and the loopback-only rule."""

from __future__ import annotations

import hmac
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serve.conftest import KEY_A, KEY_B, SCRIPTED, Service, error_code
from triagegate.errors import ConfigError
from triagegate.serve import auth
from triagegate.serve.auth import KeyRing, is_loopback, key_id, load_keys

Serve = Callable[..., Service]
METRICS_TOKEN = "metrics-0123456789abcdef"


def test_requests_without_a_valid_key_get_401(serve: Serve) -> None:
    client = serve(api_keys=(KEY_A, KEY_B)).client
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-0000000000"},
        {"Authorization": KEY_A},
        {"Authorization": f"Basic {KEY_A}"},
    ):
        response = client.post("/v1/tickets", json={"text": "hi"}, headers=headers)
        assert response.status_code == 401, headers
        assert error_code(response) == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert KEY_A not in response.text


def test_every_configured_key_works_and_probes_need_none(serve: Serve) -> None:
    client = serve(api_keys=(KEY_A, KEY_B)).client
    for key in (KEY_A, KEY_B):
        response = client.post("/v1/tickets", json={"text": "hi"}, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    lower = client.post("/v1/tickets", json={"text": "hi"}, headers={"Authorization": f"bearer {KEY_B}"})
    assert lower.status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_metrics_need_an_api_key_when_the_service_has_keys(serve: Serve) -> None:
    """Regression: /metrics used to be open to anyone even with API keys configured."""
    client = serve(api_keys=(KEY_A,)).client
    refused = client.get("/metrics")
    assert refused.status_code == 401 and error_code(refused) == "unauthorized"
    assert "triagegate_http_requests" not in refused.text
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {KEY_A}"})
    assert allowed.status_code == 200 and "triagegate_http_requests" in allowed.text


def test_a_metrics_token_opens_metrics_and_nothing_else(serve: Serve) -> None:
    client = serve(api_keys=(KEY_A,), metrics_token=METRICS_TOKEN).client
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=scraper).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.post("/v1/tickets", json={"text": "hi"}, headers=scraper).status_code == 401
    doc = client.get("/openapi.json").json()
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]


def test_a_metrics_token_protects_metrics_without_api_keys(serve: Serve) -> None:
    client = serve(metrics_token=METRICS_TOKEN).client
    assert client.post("/v1/tickets", json={"text": "hi"}).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200


def test_metrics_are_open_without_keys_or_token(serve: Serve) -> None:
    assert serve().client.get("/metrics").status_code == 200


def test_metrics_token_comes_from_the_environment() -> None:
    assert auth.load_metrics_token({}) is None
    assert auth.load_metrics_token({"TRIAGEGATE_METRICS_TOKEN": f" {METRICS_TOKEN}\n"}) == METRICS_TOKEN
    with pytest.raises(ConfigError, match="TRIAGEGATE_METRICS_TOKEN is shorter than 16"):
        auth.load_metrics_token({"TRIAGEGATE_METRICS_TOKEN": "short"})


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ring = KeyRing([KEY_A, KEY_B])
    assert ring.identify(f"Bearer {KEY_A}".encode()) == key_id(KEY_A)
    assert compared == [(KEY_A.encode(), KEY_A.encode()), (KEY_A.encode(), KEY_B.encode())], (
        "no early exit on a match"
    )
    compared.clear()
    assert ring.identify(b"Bearer nope") is None
    assert len(compared) == 2


def test_key_ids_never_reveal_the_key() -> None:
    ident = key_id(KEY_A)
    assert ident.startswith("key-") and len(ident) == 12
    assert KEY_A[:6] not in ident


def test_keys_come_from_env_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated 2026-11\n{KEY_B}\n\n{KEY_A}\n")
    keys = load_keys({"TRIAGEGATE_API_KEYS": f" {KEY_A} ,, "}, keys_file)
    assert keys == (KEY_A, KEY_B)
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_keys({"TRIAGEGATE_API_KEYS": "short"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys({}, tmp_path / "missing")


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "example.com", ""):
        assert not is_loopback(host), host


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_cli_refuses_a_public_bind_without_keys(host: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "TRIAGEGATE_API_KEYS": ""}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("triagegate")),
            "serve",
            str(SCRIPTED),
            "--host",
            host,
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve" in done.stderr
    assert "READY" not in done.stdout
