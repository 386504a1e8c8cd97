"""SQLite connection settings of the store (the embedded default database).

A WAL database's shared-memory index (``-shm``) is always memory-mapped by SQLite,
whatever ``mmap_size`` says; if that file (or the database or its ``-wal``) is made
unwritable while the service runs (``chattr +i``, a read-only remount), SQLite's next
write to the map kills the process with SIGBUS. So every connection is checked out only
while the three files can be written (:func:`writable_check`): otherwise the request
fails with a ``PermissionError`` (503 ``store_read_only``) before SQLite touches the map,
and works again, without a restart, once the files are writable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
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


def unwritable_files(database: str | Path) -> list[str]:
    """The names of the database's files (itself, ``-wal``, ``-shm``) that exist and
    cannot be written now (immutable, read-only, no permission)."""
    base = Path(database).expanduser()
    files = [base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm")]
    return [f.name for f in files if f.exists() and not os.access(f, os.W_OK)]


class _SetAside:
    """Stands in, in the pool, for a connection set aside (:func:`writable_check`):
    closing it closes nothing."""

    def close(self) -> None:
        return None

    def rollback(self) -> None:
        return None


# Connections set aside while their files could not be written: closing one then would
# make SQLite write its shared-memory map (SIGBUS); they are closed once it is safe.
_set_aside: list[tuple[str, Any]] = []
_set_aside_lock = threading.Lock()


def _close_set_aside(database: str) -> None:
    with _set_aside_lock:
        mine = [c for d, c in _set_aside if d == database]
        _set_aside[:] = [(d, c) for d, c in _set_aside if d != database]
    for connection in mine:
        with contextlib.suppress(sqlite3.Error):
            connection.close()


def writable_check(database: str | Path) -> Callable[..., None]:
    """A pool ``connect`` and ``checkout`` listener refusing a connection while a file of
    ``database`` cannot be written (see the module's docstring); on ``connect`` it must
    run before :func:`set_sqlite_pragmas` (whose first statement maps the ``-shm``). The refused connection is set aside
    unclosed (its close would write the map) and closed once the files are writable.

    Raises (from the listener):
        PermissionError: naming the files (not their folder); a storage fault, read-only.
    """
    name = str(database)

    def check_writable(dbapi_connection: Any, record: Any, proxy: Any = None) -> None:
        refused = unwritable_files(name)
        if not refused:
            if _set_aside:
                _close_set_aside(name)
            return
        if proxy is not None:  # a checkout: the connection has used the map, set it aside
            with _set_aside_lock:
                _set_aside.append((name, dbapi_connection))
            record.dbapi_connection = _SetAside()  # what the pool closes when it drops it
        # a connect (no proxy): nothing read yet, the pool may close it
        raise PermissionError(
            errno.EPERM,
            "the database cannot be written (SQLite would crash on it), "
            f"refused: {', '.join(refused)}",
        )

    return check_writable
