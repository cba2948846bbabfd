"""Shared pytest configuration: fixtures for the loopback OpenAI-compatible server."""

from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults and a root logger without triagegate's handler,
    whatever an earlier test or CLI call configured."""
    from triagegate import log

    log.reset()
    yield
    log.reset()
