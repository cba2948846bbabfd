"""Real Redis and PostgreSQL for tests: reach them, start them if needed, isolate each test.

The services are the machine's own on 127.0.0.1 (``scripts/services.sh`` installs and
starts them when they are missing). Each test gets its own database
(``triagegate_test_<random>``, created through the ``postgres`` database and dropped
afterwards) and its own stream names, so runs and tests never see each other's data.
Tests skip, saying why, only when a service is unreachable and the script could not
bring it up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TRIAGEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_DSN = os.environ.get("TRIAGEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


@cache
def _services_script_result() -> str:
    """Run scripts/services.sh once per test session; '' on success, else its complaint."""
    try:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "services.sh")], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")


def require(url: str, default_port: int, what: str) -> None:
    if _answers(url, default_port):
        return
    problem = _services_script_result()
    if not _answers(url, default_port):
        pytest.skip(f"{what} at {url} is unreachable and scripts/services.sh could not start it: {problem}")


def require_redis() -> str:
    require(REDIS_URL, 6379, "Redis")
    return REDIS_URL


def require_postgres() -> str:
    require(PG_ADMIN_DSN, 5432, "PostgreSQL")
    return PG_ADMIN_DSN


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database() -> tuple[str, str]:
    """Create a fresh database; returns (name, dsn)."""
    import psycopg

    admin = require_postgres()
    name = f"triagegate_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return name, with_database(admin, name)


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def unique_stream() -> str:
    return f"triagegate-test:{uuid.uuid4().hex[:12]}"


def delete_stream_keys(stream: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{stream}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
