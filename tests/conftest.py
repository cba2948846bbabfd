"""Shared pytest configuration: fixtures for the loopback OpenAI-compatible server."""

pytest_plugins = ["tests.support.fixtures"]
