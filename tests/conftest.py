"""Shared pytest configuration: fixtures for the loopback OpenAI-compatible server."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever an earlier test or CLI call configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
