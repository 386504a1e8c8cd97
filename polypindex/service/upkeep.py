"""Index upkeep off the request path: :class:`IndexUpkeep`, one background thread.

Requests only search the loaded index (and put tombstones on it for a delete);
everything that takes longer happens in this thread, never under the lock a
search needs for longer than a swap:

- **catch-up**: every ``index_refresh_seconds`` it applies the store's change log
  after the last change the index holds
  (:func:`~polypindex.indexer.generations.apply_changes`: every write, delete and
  forced re-index of any replica, in order; the store is read with no index lock
  held, removals become tombstones); :meth:`IndexUpkeep.behind` says by how many
  changes, and how old the oldest, the index trails the store;
- **in-process changes**: the job runner hands every procedure it commits to
  :meth:`IndexUpkeep.replaced` (the serving index is updated at once, no second
  copy is loaded), and ``DELETE /procedures/{uid}`` to :meth:`IndexUpkeep.deleted`;
- **compaction**: when tombstones pile up or the size calls for another kind
  (exact → HNSW), :meth:`VectorIndex.compact` builds the new backend beside the live
  one and swaps it in;
- **snapshots**: an index with adds or a swap since its last snapshot is saved at
  most every ``save_every_s`` seconds, any changed one at shutdown and at the end
  of a job (the bytes under the shared lock, searches go on); tombstones alone
  wait (the store catches a snapshot up when it is opened);
- **repair**: an index found corrupt (a search returned a score no cosine can
  have) or one whose snapshot could not be used at start-up and is too large to
  rebuild before serving is rebuilt from the store here; ``GET /healthz`` says
  ``degraded`` with the reason meanwhile and searches answer 503 ``not_ready``.

``GET /healthz`` reads :meth:`IndexUpkeep.status`; it never syncs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.generations import (
    applied_change,
    apply_changes,
    build_from_store,
    generation_dir,
    sync_with_store,
)
from polypindex.indexer.store import Store
from polypindex.indexer.store_changes import Behind, ChangeLog
from polypindex.indexer.vectors import VectorIndex
from polypindex.indexer.worker import BackgroundWorker

logger = logging.getLogger(__name__)

READY, REBUILDING, FAILED = "ready", "rebuilding", "failed"


def fingerprint(store: Store, encoder_version: str) -> tuple[int, int]:
    """``(highest tracklet id, tracklets of encoder_version)``: changes with any insert
    (ids are never reused) or delete."""
    return store.max_tracklet_id(), store.count_tracklets(encoder_version)


class IndexUpkeep:
    """Keeps the serving index equal to the store, compacted, saved and sound.

    Args:
        store: the source of truth.
        index_root: the index folder (generations live under it).
        encoder_version, dim: the served encoder's.
        index: the loaded index; ``None`` when it is still to be rebuilt (``reason`` says why).
        refresh_s: least seconds between two checks of the store for other writers
            (``0``: every pass of the thread).
        seen: the store's :func:`fingerprint` taken before the index was loaded.
        reason: why the index is rebuilt in the background (with ``index=None``).
        save_every_s: least seconds between two snapshots of a changed index.
        max_behind: the most store changes the index may trail by and be ready
            (:meth:`behind_problem`); ``None``: no bound.
    """

    def __init__(
        self,
        store: Store,
        index_root: str | Path,
        encoder_version: str,
        dim: int,
        index: VectorIndex | None,
        *,
        refresh_s: float,
        seen: tuple[int, int] | None = None,
        reason: str | None = None,
        save_every_s: float = 30.0,
        max_behind: int | None = None,
    ) -> None:
        self.store = store
        self.index_root = Path(index_root)
        self.encoder_version = encoder_version
        self.dim = dim
        self.index = index
        self.refresh_s = refresh_s
        self.save_every_s = save_every_s
        self.max_behind = max_behind
        self._seen = seen if seen is not None else fingerprint(store, encoder_version)
        self._state = READY if index is not None else REBUILDING
        self._problem = reason
        self._last_check = time.monotonic()
        self._last_save = time.monotonic()
        self._saved_changes = index.changes if index is not None else -1
        self._saved_structural = index.structural_changes if index is not None else -1
        self._worker = BackgroundWorker(
            "polypindex-index-upkeep",
            self._pass,
            lambda: max(0.02, min(self.refresh_s, 1.0)),
            error="index upkeep failed; the loaded index keeps serving",
            logger=logger,
        )
        self._lock = threading.Lock()  # one pass at a time (the thread, or step() in tests)
        self._save_lock = threading.Lock()
        self.passes = 0
        if index is not None:
            index.background_upkeep = True

    # -- what requests read --------------------------------------------------------------

    def status(self) -> tuple[str, str | None]:
        """``(state, problem)``: ``"ready"``, ``"rebuilding"`` (with why) or ``"failed"``."""
        index = self.index
        if index is not None and index.corrupt and self._state == READY:
            return REBUILDING, f"{index.corrupt} (rebuild queued)"
        return self._state, self._problem

    def serving(self) -> VectorIndex | None:
        """The index requests may search now, or ``None`` (rebuilding or failed)."""
        index = self.index
        if index is None or index.corrupt or self._state != READY:
            if index is not None and index.corrupt:
                self._worker.wake()
            return None
        return index

    # -- in-process changes (the job runner, DELETE) -------------------------------------

    def replaced(self, removed: Sequence[int], ids: Sequence[int], vectors: np.ndarray) -> None:
        """A procedure's rows were committed (``ids`` replacing ``removed``): searchable now."""
        index = self.index
        if index is None:
            return
        before = self._seen
        index.remove(removed)
        index.add(np.asarray(ids, dtype=np.int64), vectors, skip_present=True)
        self._expect(before, len(ids) - len(removed), max(ids) if len(ids) else None)
        self._worker.wake()

    def deleted(self, ids: Sequence[int]) -> None:
        """A procedure's rows were deleted: tombstones now, compacted in the background."""
        index = self.index
        if index is None:
            return
        before = self._seen
        index.remove(ids)
        self._expect(before, -len(ids), None)
        self._worker.wake()

    def _expect(self, before: tuple[int, int], count_delta: int, new_max: int | None) -> None:
        """Take the store's fingerprint as seen if it moved exactly as this change did
        (else another writer changed it too: the next check syncs)."""
        try:
            now = fingerprint(self.store, self.encoder_version)
        except Exception:  # the store is away: the next check will tell
            return
        max_id = before[0] if new_max is None else max(before[0], new_max)
        if now == (max_id, before[1] + count_delta) or (
            new_max is None and now[1] == before[1] + count_delta
        ):
            self._seen = now

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread, then save a changed index."""
        self._worker.stop(timeout)
        try:
            self._save(force=True)
        except Exception:
            logger.exception("cannot save the index snapshot at shutdown")

    def _pass(self) -> bool:
        self.step()
        return False  # the next pass after the wait (or a wake-up)

    def step(self) -> dict[str, Any]:
        """One pass: repair, catch up, compact, save (what the thread runs; tests call it)."""
        done: dict[str, Any] = {}
        with self._lock:
            self.passes += 1
            index = self.index
            if index is None or index.corrupt:
                done["rebuilt"] = self._rebuild(index)
                return done
            now = time.monotonic()
            if now - self._last_check >= self.refresh_s:
                self._last_check = now
                synced = apply_changes(index, self.store)
                if synced is None:  # not synced in this process yet
                    synced = sync_with_store(index, self.store)
                if synced != (0, 0):
                    done["synced"] = synced
                self._seen = fingerprint(self.store, self.encoder_version)
            if index.needs_compaction():
                done["compacted"] = index.compact()
            done["saved"] = self._save()
        return done

    def _rebuild(self, index: VectorIndex | None) -> bool:
        why = (index.corrupt if index is not None else None) or self._problem
        self._state, self._problem = REBUILDING, f"the index is being rebuilt from the store: {why}"
        logger.warning("%s", self._problem)
        try:
            seen = fingerprint(self.store, self.encoder_version)
            policy = index.policy if index is not None else None
            fresh = build_from_store(self.store, self.encoder_version, self.dim, policy=policy)
            if index is None:
                fresh.background_upkeep = True
                fresh.directory = generation_dir(self.index_root, self.encoder_version)
                self.index = index = fresh
            else:
                index.adopt(fresh)
            self._seen = seen
            sync_with_store(index, self.store)  # rows committed during the build
            self._save(force=True)
        except Exception as exc:
            self._state, self._problem = (
                FAILED,
                f"rebuilding the index failed: {type(exc).__name__}: {exc}",
            )
            logger.exception("%s", self._problem)
            return False
        self._state, self._problem = READY, None
        logger.info("index %s rebuilt from the store: %d vectors", self.encoder_version, len(index))
        return True

    def behind(self) -> Behind | None:
        """How far the serving index trails the store's change log (``None`` while there
        is no index, or it was never synced); reads the store."""
        index = self.index
        seq = applied_change(index) if index is not None else None
        if seq is None:
            return None
        return ChangeLog(self.store).behind(seq, self.encoder_version)

    def behind_problem(self) -> str | None:
        """Why this replica is not ready for being too far behind the store: more than
        :attr:`max_behind` changes not applied (``None``: within the bound, or no bound)."""
        if self.max_behind is None:
            return None
        behind = self.behind()
        if behind is None or behind.changes <= self.max_behind:
            return None
        return (
            f"the index is {behind.changes} changes behind the store (more than "
            f"{self.max_behind}; the oldest is {behind.oldest_age_s:.0f} s old): catching up"
        )

    def save_now(self) -> bool:
        """Save the index if it changed since the last snapshot; errors propagate."""
        return self._save(force=True)

    def _save(self, force: bool = False) -> bool:
        with self._save_lock:
            return self._save_locked(force)

    def _save_locked(self, force: bool) -> bool:
        """Save a changed index; without ``force``, only for adds or a swap (not for
        tombstones alone: a delete is caught up from the store when the snapshot is
        opened, so it never costs a large write during a search load), at most every
        ``save_every_s``."""
        index = self.index
        if index is None or index.corrupt or index.changes == self._saved_changes:
            return False
        if not force and (
            index.structural_changes == self._saved_structural
            or time.monotonic() - self._last_save < self.save_every_s
        ):
            return False
        changes, structural = index.changes, index.structural_changes
        index.save(index.directory or generation_dir(self.index_root, self.encoder_version))
        self._saved_changes, self._saved_structural = changes, structural
        self._last_save = time.monotonic()
        return True


class ServingSink:
    """What the job runner's pipeline writes to instead of a second copy of the index
    (an :class:`~polypindex.indexer.generations.IndexSink`): the serving index, through
    :class:`IndexUpkeep` (which also saves it). The pipeline calls :meth:`remove` (the
    procedure's old rows) then :meth:`add` (its new ones) after each commit."""

    def __init__(self, upkeep: IndexUpkeep) -> None:
        self.upkeep = upkeep
        self._removed: list[int] = []

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        self._removed = [int(i) for i in ids]
        index = self.upkeep.index
        return index.remove(self._removed) if index is not None else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray, encoder_version: str | None = None) -> int:
        removed, self._removed = self._removed, []
        if encoder_version is not None and encoder_version != self.upkeep.encoder_version:
            return 0  # another generation: it is caught up when opened
        self.upkeep.replaced(removed, [int(i) for i in ids], vectors)
        return len(ids)

    def save(self) -> None:
        """Save the serving index now (the bytes under the shared lock: searches go on);
        a failure (a full disk) fails the job that asked, naming it."""
        self.upkeep.save_now()

    def __len__(self) -> int:
        index = self.upkeep.index
        return len(index) if index is not None else 0
