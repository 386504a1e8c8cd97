"""The schema commands' way into the database (``polypindex db upgrade`` / ``db current``):
the migrations of :mod:`indexer.migrate` on an engine of their own, without opening a
:class:`indexer.store.Store` (which would migrate or refuse the database first).

Part of the store layer (docs/architecture.md#the-store). The engine has no pool (one
connection at a time, closed when done) and is disposed before these return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from polypindex.indexer.migrate import schema_state, upgrade


@contextlib.contextmanager
def _schema_engine(url: str, *, make_folder: bool = False) -> Iterator[Engine]:
    """An engine on ``url`` for one schema command, disposed after; ``make_folder`` creates
    the folder of an SQLite file first."""
    if make_folder and url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade_database(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database at ``url`` to ``revision`` (its SQLite folder created if needed).

    Returns:
        ``(before, after)`` revisions.
    """
    with _schema_engine(url, make_folder=True) as engine:
        return upgrade(engine, revision)


def database_revisions(url: str) -> tuple[str | None, str]:
    """``(current, head)``: the revision the database at ``url`` is at and the one this code
    needs."""
    with _schema_engine(url) as engine:
        return schema_state(engine)
