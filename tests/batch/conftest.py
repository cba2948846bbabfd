"""Fixtures for batch tests: a loopback OpenAI-compatible server that marks tickets to escalate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.batch.support import batch_env, confidence_by_text
from tests.support.openai_server import OpenAIServer


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    """A started server in this process; tickets containing ``ESCALATE`` get low confidence."""
    with OpenAIServer(record=False, code_confidence=confidence_by_text, hang_seconds=5.0) as srv:
        yield srv


@pytest.fixture
def env(server: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    return batch_env(server.base_url, TRIAGEGATE_CACHE_DIR=str(cache))
