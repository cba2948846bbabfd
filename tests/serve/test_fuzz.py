"""Fuzz the API from its own OpenAPI document with schemathesis: no 5xx, no hang, documented answers,
and the document and the server agree on what is valid.

Generated requests (valid and invalid tickets, forms, batches, probes) go over real
loopback HTTP to a service running the scripted graph, with a valid key so they reach
the handlers. Each call has a timeout, so a hang fails the test instead of stalling it.
Besides the response checks, valid requests must be accepted and invalid ones rejected
(``positive_data_acceptance``, ``negative_data_rejection``): that is where the document
used to disagree with the server (an empty attachment URL, more images than the graph
allows, a batch over ``max_batch`` answered 413, batch items that are not objects), and
every operation the document marks as needing a bearer token must refuse a request without
one (``ignored_auth``; ``/metrics`` used to be open with keys configured). The
OpenAI-compatible routes are fuzzed the same way: conversations (every role, text and image
parts, fields the route ignores), streamed answers (each server-sent event checked against
the document) and the model list; a positive run must get at least one answered
conversation. The one exception is an image's bytes, which no schema can describe: a well-formed request
whose image is not a real PNG/JPEG/GIF/WebP is refused by content, and that refusal is
not counted against the document. Examples are bounded per operation and mode to keep
the run short. (Hypothesis drives schemathesis' strategies directly: its pytest fixture
loader does not run under pytest 9.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import ignored_auth, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import KEY_A, scripted_pipeline
from tests.support.live_server import LiveServer
from triagegate.serve.app import create_app
from triagegate.serve.settings import ServeSettings

pytestmark = pytest.mark.slow
IMAGE_CONTENT = re.compile(r"^(invalid ticket: )?(attachments\[\d+\]: )?image |is not an accepted image")
NOT_STORABLE = "cannot be kept on a thread"
"""A ticket on a thread whose metadata has an integer past 64 bits (valid JSON) is refused: the checkpointer cannot store it."""


@schemathesis.check
def valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, except for a refusal of an image by its content, or of a thread's
    ticket the checkpointer cannot store."""
    if response.status_code in (413, 422):
        error = response.json().get("error", {})
        if error.get("code") == "image_too_large" or IMAGE_CONTENT.search(error.get("message", "")):
            return None
        if NOT_STORABLE in error.get("message", ""):
            return None
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    valid_requests_are_accepted,
    negative_data_rejection,
    ignored_auth,
]
FORM_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
"""For multipart forms: every form field is text on the wire, so a field "made invalid" by
changing its type (a number or a boolean where the document says string) arrives as valid
text, and the server is right to accept it. The other checks still apply to forms."""
AUTH = {"Authorization": f"Bearer {KEY_A}"}
EXAMPLES = 30


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    app = create_app(
        scripted_pipeline(),
        ServeSettings(api_keys=(KEY_A,), rate_limit=0, max_batch=8, max_body_bytes=256 * 1024),
    )
    with LiveServer(app) as server:
        yield server.url


def operations(live_url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_never_fails_on_generated_input(live_url: str, mode: GenerationMode) -> None:
    found = operations(live_url)
    assert {op.path for op in found} >= {
        "/v1/tickets",
        "/v1/tickets:batch",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
    }
    calls: list[tuple[str, int]] = []
    if mode is GenerationMode.NEGATIVE:
        found = [op for op in found if op.method.upper() == "POST"]  # nothing invalid to make for bare GETs
    for operation in found:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case: Any) -> None:
            checks = FORM_CHECKS if (case.media_type or "").startswith("multipart/") else CHECKS
            response = case.call_and_validate(base_url=live_url, headers=AUTH, checks=checks, timeout=15)
            calls.append((case.operation.path, response.status_code))

        fuzz()
    assert len(calls) >= len(found), "every operation was called"
    if mode is GenerationMode.POSITIVE:
        answered = {path for path, status in calls if status == 200}
        assert "/v1/chat/completions" in answered, "generated conversations reach the pipeline"
