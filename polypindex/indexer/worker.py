"""One background thread that repeats a step: what the job runner and the index upkeep run in."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class BackgroundWorker:
    """A named daemon thread calling ``step`` until :meth:`stop`.

    ``step`` returns whether more work is waiting: then it is called again at once;
    otherwise the thread waits ``interval()`` seconds, or until :meth:`wake`. An
    exception from ``step`` is logged (``error`` says what failed, on ``logger``) and the
    loop goes on: a store that is away for a while does not end the thread.

    Args:
        name: the thread's name.
        step: one pass of the work.
        interval: seconds to wait after a pass with nothing more waiting (read each time).
        error: the log message when a pass raises.
        logger: where that message goes (the owner's logger).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], bool],
        interval: Callable[[], float],
        *,
        error: str,
        logger: logging.Logger,
    ) -> None:
        self.name = name
        self._step = step
        self._interval = interval
        self._error = error
        self._logger = logger
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread was started and not stopped since."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (nothing when it runs already)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Cut the current wait short: the next pass starts now."""
        self._wake.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current pass; wait for the thread at most ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                more = self._step()
            except Exception:
                self._logger.exception("%s", self._error)
                more = False
            if not more:
                self._wake.wait(self._interval())
                self._wake.clear()
