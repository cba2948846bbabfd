"""A store per test in both dialects: a SQLite file, and a private database on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "outcomes.sqlite")
        return
    services.require_postgres()
    name, dsn = services.create_database()
    try:
        yield dsn
    finally:
        services.drop_database(name)
