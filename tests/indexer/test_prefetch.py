"""Overlapped indexing: the bounded prefetch thread, identical results with and without
it, a failing decoder's error in the caller with the thread stopped, and progress per
chunk of tracklets within one long procedure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.indexing import FakeEncoder

from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.prefetch import Prefetch
from polypindex.indexer.progress import Progress
from polypindex.indexer.sources import ProcedureSource
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ImageReadError
from polypindex.model.data.embedding import EMBED_CHUNK
from polypindex.model.data.tracklets import Tracklet

H, W = 48, 64


def _image(frame: int) -> np.ndarray:
    rng = np.random.default_rng(frame)
    return rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)


def _procedure(
    uid: str, n_tracklets: int, length: int = 4, fail_at: int | None = None
) -> ProcedureSource:
    """``n_tracklets`` tracklets, tracklet ``i`` on frames ``[2i, 2i + length)``; the frame
    reader raises :class:`ImageReadError` at frame ``fail_at``."""
    tracklets = [
        Tracklet(
            sequence_id=uid,
            identity_id=f"p{i % 5}",
            index=i,
            frame_ids=np.arange(2 * i, 2 * i + length, dtype=np.int64),
            boxes=np.tile(np.asarray([5 + i % 7, 6, 20, 18], np.float32), (length, 1)),
        )
        for i in range(n_tracklets)
    ]

    def frames(wanted: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for f in wanted:
            if fail_at is not None and f == fail_at:
                raise ImageReadError(f"{uid}: frame {f} cannot be decoded")
            yield int(f), _image(int(f) + 1000 * len(uid))

    return ProcedureSource(uid, "ds", f"test:{uid}", tracklets, frames)


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("index-prefetch")]


def _stored(store: Store) -> list[tuple[Any, ...]]:
    out = []
    for procedure in store.list_procedures():
        ids = store.tracklet_ids_for_procedure(procedure.uid)
        for _tid, rec in sorted(store.get_tracklets(ids).items()):
            out.append((procedure.uid, rec.key, rec.boxes, rec.embedding.tobytes()))
    return out


def test_same_rows_and_embeddings_with_and_without_prefetch(tmp_path: Path) -> None:
    batch = [_procedure("a", 70), _procedure("b", 3), _procedure("c", 40, length=6)]
    results = {}
    for depth in (0, 1, 3):
        store = Store(f"sqlite:///{tmp_path / f'db{depth}.sqlite'}")
        report = index_sources(
            batch, store, tmp_path / f"index{depth}", FakeEncoder(), progress=False, prefetch=depth
        )
        assert report.procedures_indexed == 3 and report.tracklets == 113
        results[depth] = (_stored(store), report.frames, report.images_decoded)
        store.close()
    assert results[0] == results[1] == results[3]
    assert not _threads()


def test_a_failing_decoder_raises_here_and_stops_the_thread(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    batch = [_procedure("ok", 5), _procedure("bad", 60, fail_at=50), _procedure("after", 5)]
    with pytest.raises(ImageReadError, match="frame 50"):
        index_sources(batch, store, tmp_path / "index", FakeEncoder(), progress=False, prefetch=2)
    assert [p.uid for p in store.list_procedures()] == ["ok"]  # nothing of "bad", nor later
    deadline = time.monotonic() + 5
    while _threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _threads()


def test_progress_per_chunk_within_one_long_procedure(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    states: list[Progress] = []
    n = 3 * EMBED_CHUNK + 5
    index_sources(
        [_procedure("long", n)],
        store,
        tmp_path / "index",
        FakeEncoder(),
        progress=False,
        on_progress=states.append,
        progress_every_s=0.0,
    )
    within = [s for s in states if s.procedures_done == 0]
    assert len(within) >= 3  # the single procedure is not 0/1 until the end
    assert [s.tracklets for s in within] == sorted(s.tracklets for s in within)
    assert within[0].tracklets >= EMBED_CHUNK and within[0].frames > 0
    last = states[-1]
    assert last.procedures_done == 1 and last.tracklets == last.tracklets_total == n
    assert last.frames == last.frames_total == n * 4
    assert last.to_dict()["frames_per_s"] > 0


def test_skipped_procedures_count_and_rerun_is_identical(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    batch = [_procedure("a", 4), _procedure("b", 4)]
    index_sources(batch, store, tmp_path / "index", FakeEncoder(), progress=False)
    before = _stored(store)
    again = index_sources(
        [*batch, batch[0]], store, tmp_path / "index", FakeEncoder(), progress=False
    )
    assert (again.procedures_indexed, again.procedures_skipped) == (0, 3)
    assert _stored(store) == before


def test_prefetch_runs_ahead_bounded_and_hands_errors_over() -> None:
    made: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            made.append(i)
            yield i

    ahead = Prefetch(source(), depth=2)
    time.sleep(0.2)
    assert len(made) <= 2 + 1  # the queue holds 2, the thread one more at most
    assert next(ahead) == 0
    ahead.close()
    assert not ahead.thread.is_alive()

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    with Prefetch(failing(), depth=1) as it:
        assert next(it) == 1
        with pytest.raises(ValueError, match="boom"):
            next(it)
        assert not it.thread.is_alive()
    with pytest.raises(ValueError):
        Prefetch(iter([]), depth=0)
