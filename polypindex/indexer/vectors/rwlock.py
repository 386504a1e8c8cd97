"""A readers-writer lock: many searches at once, one change at a time.

FAISS searches are safe to run concurrently with each other but not with an
``add`` (or a swap of the backend), so :class:`VectorIndex` holds this lock
shared while it searches or serialises and exclusively while it changes. Writers
are preferred (a waiting writer holds back new readers), so an upkeep step is
never starved by a search load. The writer side is re-entrant, and the thread
holding it may also take the read side.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    """Shared (:meth:`read`) / exclusive (``with lock:`` or :meth:`write`) lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared (or nothing more, in the thread that holds it exclusively)."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                mine = True
            else:
                mine = False
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        try:
            yield
        finally:
            if not mine:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    def acquire(self) -> None:
        """Take the lock exclusively (re-entrant)."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
                return
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer, self._writer_depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._writer != threading.get_ident():
                raise RuntimeError("release of an RWLock not held by this thread")
            self._writer_depth -= 1
            if self._writer_depth == 0:
                self._writer = None
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> RWLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
