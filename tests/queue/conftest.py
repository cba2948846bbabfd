"""Fixtures for the queue tests: a private database and stream per test, on the real services."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import triagegate
from tests.support import services
from triagegate.models.base import ChatRequest
from triagegate.pipeline import Pipeline
from triagegate.queue.redis_stream import TicketStream, connect
from triagegate.store.postgres import OutcomeStore

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
SCRIPTED = GRAPHS / "scripted.yaml"
LOOPBACK = GRAPHS / "loopback_openai.yaml"


def triage_reply(code: str = "A", confidence: float = 0.95) -> str:
    return json.dumps(
        {
            "category": code,
            "priority": "normal",
            "complexity": "low",
            "needs_vision": False,
            "answer": "Refund on its way.",
            "confidence": confidence,
        }
    )


def scripted_pipeline(mini: Callable[[ChatRequest], Any] | None = None) -> Pipeline:
    escalation = json.dumps({"category": "billing", "priority": "high", "answer": "Looked at it."})
    return triagegate.load(
        SCRIPTED,
        environ={},
        extras={
            "scripted": {
                "mini": {"chat": mini or (lambda _r: triage_reply())},
                "flagship": {"chat": lambda _r: escalation},
            }
        },
    )


@pytest.fixture
def redis_url() -> str:
    return services.require_redis()


@pytest.fixture
def database() -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    name, dsn = services.create_database()
    try:
        yield dsn
    finally:
        services.drop_database(name)


@pytest.fixture
def stream_name(redis_url: str) -> Iterator[str]:
    name = services.unique_stream()
    try:
        yield name
    finally:
        services.delete_stream_keys(name)


@dataclass
class QueueEnv:
    redis: aioredis.Redis
    stream: TicketStream
    store: OutcomeStore
    dsn: str
    redis_url: str


@pytest.fixture
async def queue_env(redis_url: str, stream_name: str, database: str) -> AsyncIterator[QueueEnv]:
    client = connect(redis_url)
    store = await OutcomeStore(database).open()
    await store.migrate()
    try:
        yield QueueEnv(client, TicketStream(client, stream_name, "workers"), store, database, redis_url)
    finally:
        await store.close()
        await client.aclose()
