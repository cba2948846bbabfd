"""Size limits (413) and per-key rate limits (429 with Retry-After), each with its JSON code."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from tests.serve.conftest import KEY_A, KEY_B, Service, data_url, error_code
from tests.support.images import tiny_png
from triagegate.serve.limits import RateLimiter, TokenBucket, data_url_bytes

Serve = Callable[..., Service]


def test_body_over_the_limit_is_413_by_content_length(serve: Serve) -> None:
    client = serve(max_body_bytes=2_000).client
    response = client.post("/v1/tickets", json={"text": "x" * 3_000})
    assert (response.status_code, error_code(response)) == (413, "body_too_large")
    assert client.post("/v1/tickets", json={"text": "x" * 1_000}).status_code == 200


def test_chunked_body_over_the_limit_is_413(serve: Serve) -> None:
    client = serve(max_body_bytes=2_000).client

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    response = client.post("/v1/tickets", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert (response.status_code, error_code(response)) == (413, "body_too_large")


def test_image_over_the_limit_is_413(serve: Serve) -> None:
    png = tiny_png()
    big = png + b"\x00" * 5_000
    client = serve(max_image_bytes=1_000).client
    as_url = client.post("/v1/tickets", json={"text": "x", "attachments": [{"url": data_url(big)}]})
    assert (as_url.status_code, error_code(as_url)) == (413, "image_too_large")
    upload = client.post("/v1/tickets", data={"text": "x"}, files=[("images", ("big.png", big, "image/png"))])
    assert (upload.status_code, error_code(upload)) == (413, "image_too_large")
    small = client.post("/v1/tickets", data={"text": "x"}, files=[("images", ("ok.png", png, "image/png"))])
    assert small.status_code == 200, small.text


def test_rate_limit_is_per_key_with_retry_after(serve: Serve) -> None:
    client = serve(api_keys=(KEY_A, KEY_B), rate_limit=0.5, rate_burst=2).client
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    statuses = [client.post("/v1/tickets", json={"text": "hi"}, headers=a).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.post("/v1/tickets", json={"text": "hi"}, headers=a)
    assert error_code(limited) == "rate_limited"
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert client.post("/v1/tickets", json={"text": "hi"}, headers=b).status_code == 200, (
        "keys have separate buckets"
    )
    assert client.get("/healthz").status_code == 200, "probes are not rate limited"


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take(0.0)
    assert math.isclose(wait, 0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0
    assert bucket.tokens <= 3


def test_rate_limiter_forgets_least_recent_identities() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 1, max_identities=2, clock=lambda: now[0])
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    limiter.check("b")
    limiter.check("c")
    assert limiter.check("a") == 0.0, "a was evicted, so it starts with a full bucket"
    assert RateLimiter(0, 1).check("anyone") == 0.0


def test_data_url_size_is_the_decoded_size() -> None:
    for size in (0, 1, 2, 3, 100, 1001):
        assert data_url_bytes(data_url(b"\x01" * size)) == size
    assert data_url_bytes("data:text/plain,hello") == 5
