"""Schema migrations of the store (Alembic), run through the API, never ``create_all``.

The Alembic environment ships inside the package (``indexer/migrations``);
:func:`alembic_config` points a programmatic :class:`alembic.config.Config` at
it, so ``polypindex db upgrade`` works from any working directory and from an
installed wheel.

:func:`upgrade` takes a lock first (a PostgreSQL advisory lock; a file lock
beside an SQLite file) so that two processes opening the same database at the
same time do not both try to create the tables. A database made by the old
``create_all`` (tables present, no ``alembic_version``) is adopted: stamped at
the initial revision, then upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from polypindex.model.core.errors import PolypIndexError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"
# The newest revision in migrations/versions (a test checks it against Alembic's own
# view): kept here so that opening a store at the head never imports Alembic.
HEAD_REVISION = "0008"
# pg_advisory_xact_lock key: any constant shared by every PolypIndex process.
_PG_LOCK_KEY = 0x504F4C5950  # "POLYP"


class SchemaOutOfDateError(PolypIndexError):
    """The database schema is not at the revision this code needs; run ``polypindex db upgrade``."""


def alembic_config(url: str | None = None) -> Config:
    """A Config pointing at the packaged migrations (``url`` sets ``sqlalchemy.url``)."""
    from alembic.config import Config  # alembic is imported only when migrating

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    return HEAD_REVISION


@functools.lru_cache(maxsize=1)
def alembic_head_revision() -> str | None:
    """The head revision as Alembic computes it from the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def schema_state(engine: Engine) -> tuple[str | None, str]:
    """``(current, head)`` revisions."""
    with engine.connect() as conn:
        return current_revision(conn), head_revision()


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDateError unless the database is at the head revision."""
    current, head = schema_state(engine)
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise SchemaOutOfDateError(
            f"database {where} has no PolypIndex schema; create it with `polypindex db upgrade`"
        )
    from alembic.script import ScriptDirectory

    revisions = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in revisions:
        raise SchemaOutOfDateError(
            f"database {where} is at revision {current!r}, which this code does not know "
            f"(head {head!r}): it was migrated by a newer PolypIndex; upgrade the software"
        )
    raise SchemaOutOfDateError(
        f"database {where} is at revision {current!r} but this code needs {head!r}; "
        f"run `polypindex db upgrade`"
    )


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction on ``engine`` that holds the migration lock until after it commits."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Held until the transaction ends, i.e. after the migration commits.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield conn
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        with engine.begin() as conn:
            yield conn
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate.lock")
    with lock_path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                # Batch migrations rebuild tables (copy, drop, rename): with foreign keys
                # on, dropping ``procedures`` would cascade to ``tracklets``.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database to ``revision`` (default the newest); a no-op when already there.

    Returns:
        ``(before, after)`` revisions.
    """
    from alembic import command

    with engine.connect() as probe:
        before = current_revision(probe)
    if revision == "head" and before == head_revision():
        return before, before
    with _migration_lock(engine) as conn:
        before = current_revision(conn)  # again, under the lock
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        if before is None and {"procedures", "tracklets"} <= set(inspect(conn).get_table_names()):
            logger.warning(
                "adopting a database created without migrations: stamping revision %s",
                BASELINE_REVISION,
            )
            command.stamp(cfg, BASELINE_REVISION)
        command.upgrade(cfg, revision)
        after = current_revision(conn)
    if before != after:
        logger.info("database migrated from %s to %s", before, after)
    return before, after


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Migrate the database down to ``revision`` (``"base"`` drops every table)."""
    from alembic import command

    with _migration_lock(engine) as conn:
        before = current_revision(conn)
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        after = current_revision(conn)
    return before, after
