"""Shared fixtures of the indexer tests: database URLs for SQLite and PostgreSQL.

PostgreSQL tests use the server at ``POLYPINDEX_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), each in a fresh schema
dropped at teardown; they are skipped when the server is not reachable
(:mod:`helpers.databases`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.databases import pg_schema_url


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend."""
    if request.param == "sqlite":
        (tmp_path / "db").mkdir(exist_ok=True)
        yield f"sqlite:///{tmp_path / 'db' / 'store.sqlite'}"
    else:
        yield from pg_schema_url()
