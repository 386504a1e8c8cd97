"""Databases for tests: a fresh PostgreSQL schema per test (skipped when the server is
not reachable) and the SQLite/PostgreSQL URL pair the backend-parametrised tests use.

PostgreSQL tests use the server at ``POLYPINDEX_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), each in a fresh schema
dropped at teardown.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

PG_URL = os.environ.get(
    "POLYPINDEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# the params of a backend-parametrised fixture (see :func:`backend_url`)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pg_schema_url() -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema, dropped afterwards."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the dev install has it
        pytest.skip(f"psycopg is not installed: {exc}")
    url = make_url(PG_URL)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"pi_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {url.render_as_string()} (set POLYPINDEX_TEST_PG_URL): {exc}"
        )
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def sqlite_url(folder: Path) -> str:
    """An SQLite database in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'store.sqlite'}"


def backend_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``backend`` (one of :data:`BACKENDS`): SQLite in ``tmp_path/db``
    or a fresh PostgreSQL schema (:func:`pg_schema_url`)."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path / "db")
    else:
        yield from pg_schema_url()
