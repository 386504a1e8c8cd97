"""SQLite connection settings of the store (the embedded default database)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def _enable_wal(cursor: Any, attempts: int = 50) -> None:
    """``PRAGMA journal_mode=WAL``, retried: on a new database file, switching the mode
    answers "database is locked" at once (the busy timeout does not apply to it) while
    another connection is opening the same file. WAL is stored in the file, so once one
    opener has switched it the others find it set."""
    for attempt in range(attempts):
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """On every new SQLite connection: a 30 s busy timeout, foreign keys, no memory-mapped
    I/O, WAL.

    ``mmap_size=0``: SQLite reads the database with ``read()``, never through a memory map
    (some builds turn it on by default), so a file that cannot be read or grown (immutable,
    on a full or failing disk) is an error SQLite reports, not a SIGBUS that kills the
    process.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA mmap_size=0")
        _enable_wal(cursor)
    finally:
        cursor.close()
