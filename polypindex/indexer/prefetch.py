"""A bounded prefetch: a thread runs an iterator ahead of its consumer (docs/runtimes.md).

The indexer decodes and crops the next frames (:func:`indexer.embed.procedure_chunks`)
in this thread while the encoder embeds the previous chunk; OpenCV and the encoder
runtimes release the GIL, so the two overlap. The queue holds at most ``depth`` items,
which bounds the memory ahead. An exception in the producer is raised in the consumer
at the point it happened, after the thread has ended; closing the prefetch (or leaving
its ``with`` block, e.g. on an error in the consumer) stops the thread promptly.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

from polypindex.indexer.embed import CropChunk, procedure_chunks
from polypindex.indexer.sources import ProcedureSource
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.embedding import selected_frames

T = TypeVar("T")

_END = object()
_POLL_S = 0.05


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetch(Generic[T]):
    """Iterate ``source`` in a daemon thread, ``depth`` items ahead.

    Args:
        source: the items (iterated only in the prefetch thread).
        depth: the most items made and not yet taken (>= 1).
        name: the thread's name.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self._finished = False
        self.thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self.thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
            return
        finally:
            close = getattr(self._source, "close", None)
            if callable(close) and self._stop.is_set():
                close()
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self._finished = True
            self.thread.join()
            if isinstance(item, _Failure):
                raise item.exc
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread (items made and not taken are dropped) and wait for it."""
        self._stop.set()
        self._finished = True
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_S)
        self.thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def procedure_frames(procedure: ProcedureSource, fragment: FragmentConfig) -> int:
    """Frames the encoder embeds for a procedure (its tracklets' selected frames)."""
    return int(sum(len(selected_frames(len(t), fragment)) for t in procedure.tracklets))


class ProcedureFeeder:
    """The procedures of a batch, skip decided in the caller's thread, crops made in another.

    The caller (the pipeline) calls :meth:`fill` once, then :meth:`procedure_done` after
    each procedure's last chunk: both hand the next procedures that are not skipped to
    :meth:`chunks` (at most ``lookahead`` handed and not finished), so the store is only
    read in the caller's thread, and decoding runs ahead across procedure boundaries.
    :meth:`chunks` — iterated by a :class:`Prefetch` thread, or in the caller's thread
    with ``lookahead=1`` — yields :func:`indexer.embed.procedure_chunks` procedure after
    procedure.

    Args:
        procedures: the batch, in order.
        skip: whether a procedure is skipped (called in the caller's thread).
        on_skip: called with each skipped procedure.
        preprocess / fragment: the encoder's crop settings and frame rule.
        lookahead: procedures handed ahead of the one being embedded (>= 1).
    """

    def __init__(
        self,
        procedures: Iterable[ProcedureSource],
        skip: Callable[[ProcedureSource], bool],
        on_skip: Callable[[ProcedureSource], None],
        preprocess: PreprocessConfig,
        fragment: FragmentConfig,
        lookahead: int = 1,
    ) -> None:
        self._procedures = iter(procedures)
        self._skip, self._on_skip = skip, on_skip
        self.preprocess, self.fragment = preprocess, fragment
        self.lookahead = max(1, lookahead)
        self._handed: queue.Queue[ProcedureSource | None] = queue.Queue()
        self._pending = 0
        self._ended = False

    def fill(self) -> None:
        """Hand procedures on until ``lookahead`` are pending or the batch has ended."""
        while self._pending < self.lookahead and not self._ended:
            procedure = next(self._procedures, None)
            if procedure is None:
                self.close()
            elif self._skip(procedure):
                self._on_skip(procedure)
            else:
                self._handed.put(procedure)
                self._pending += 1

    def procedure_done(self) -> None:
        """One handed procedure's last chunk was taken: hand on the next."""
        self._pending -= 1
        self.fill()

    def close(self) -> None:
        """No more procedures (ends :meth:`chunks` after those already handed)."""
        if not self._ended:
            self._ended = True
            self._handed.put(None)

    def chunks(self) -> Iterator[CropChunk]:
        while (procedure := self._handed.get()) is not None:
            yield from procedure_chunks(procedure, self.preprocess, self.fragment)
