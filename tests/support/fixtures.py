"""Pytest fixtures around the loopback OpenAI-compatible server.

Load them from ``tests/conftest.py`` with ``pytest_plugins = ["tests.support.fixtures"]``
(or by importing the fixture names there).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A started :class:`OpenAIServer` on a free loopback port, stopped after the test."""
    with OpenAIServer() as server:
        yield server
