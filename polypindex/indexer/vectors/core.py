"""The state of a :class:`~polypindex.indexer.vectors.index.VectorIndex` and its upkeep:
the backend, the tombstones of removed ids, and :meth:`IndexCore.compact`, which
rebuilds the backend without them beside the live one and swaps it in.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Final

import numpy as np

from polypindex.indexer.vectors.base import VectorBackend
from polypindex.indexer.vectors.gpu import place, resolve_device
from polypindex.indexer.vectors.policy import EXACT, IndexPolicy
from polypindex.indexer.vectors.registry import backend_class
from polypindex.indexer.vectors.rwlock import RWLock
from polypindex.model.core.errors import ConfigError, EncoderMismatchError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig

logger = logging.getLogger(__name__)

COMPACT_FRACTION = 0.1
"""Tombstones, as a fraction of the vectors held, from which an index is compacted."""
COMPACT_SMALL = 50_000
"""Indexes holding fewer vectors are compacted at any tombstone (it takes milliseconds)."""
_COPY_CHUNK = 65_536
SHRINK_MARGIN = 0.9


def cpu_backend(backend: VectorBackend) -> Any:
    """The CPU backend under a GPU search wrapper (or ``backend`` itself)."""
    return getattr(backend, "inner", backend)


def _copy_range(backend: VectorBackend, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors at insertion positions ``[start, stop)``."""
    cpu = cpu_backend(backend)
    if hasattr(cpu, "vectors_range"):
        ids, vectors = cpu.vectors_range(start, stop)
        return ids, vectors
    ids, vectors = backend.vectors()
    return ids[start:stop], vectors[start:stop]


class IndexCore:
    """What every :class:`~polypindex.indexer.vectors.index.VectorIndex` holds (see there
    for the arguments and attributes), its structure and its compaction."""

    def __init__(
        self,
        dim: int,
        encoder_version: str,
        *,
        kind: str | None = EXACT,
        policy: IndexPolicy | None = None,
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
        max_row_id: int = 0,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if not encoder_version:
            raise ConfigError("encoder_version must be a non-empty string")
        self._policy = policy or IndexPolicy()
        self.auto_kind: Final = kind is None
        self._kind = kind if kind is not None else self._policy.kind_for(0)
        empty = backend_class(self._kind)(dim, self._policy)
        self.device: Final = resolve_device(self._policy.device)
        self._backend: VectorBackend = place(empty, self.device)
        self.dim: Final = dim
        self.encoder_version: Final = encoder_version
        self.preprocess = preprocess
        self.fragment = fragment
        self.directory: Path | None = None
        self._max_row_id = int(max_row_id)
        self.lock = RWLock()
        self._tombstones: set[int] = set()
        self._dead = np.zeros(0, dtype=np.int64)  # the tombstones, sorted
        self._journal: list[tuple[np.ndarray, np.ndarray]] | None = None  # adds while compacting
        self._compacting = threading.Lock()
        self.background_upkeep = False
        self.corrupt: str | None = None
        self.rebuilt_reason: str | None = None
        self.changes = 0
        self.structural_changes = 0

    # -- properties ----------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The registered kind of the backend (:mod:`polypindex.indexer.vectors.registry`)."""
        return self._kind

    @property
    def policy(self) -> IndexPolicy:
        """Thresholds and parameters; a new one applies to the next search."""
        return self._policy

    @policy.setter
    def policy(self, policy: IndexPolicy) -> None:
        self._policy = self._backend.policy = policy

    @property
    def max_id(self) -> int:
        """Highest row id this index has seen (0 when none): catch-up starts after it."""
        return self._max_row_id

    @property
    def supports_remove(self) -> bool:
        """Whether the backend could remove ids in place (exact) rather than by rebuilding
        (HNSW, IVF). Removals are tombstones for every kind; this only says how cheap the
        next :meth:`compact` is."""
        return self._backend.supports_remove

    @property
    def tombstones(self) -> np.ndarray:
        """Ids removed but still held until the next :meth:`compact`: int64, sorted."""
        return self._dead.copy()

    @property
    def held(self) -> int:
        """Vectors the backend holds, tombstones included."""
        return len(self._backend)

    def __len__(self) -> int:
        return len(self._backend) - len(self._tombstones)

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self._kind!r}, dim={self.dim}, "
            f"encoder_version={self.encoder_version!r}, size={len(self)})"
        )

    def ids(self) -> np.ndarray:
        """The ids held (tombstones left out): int64 ``(N,)`` in insertion order."""
        with self.lock.read():
            held = self._backend.ids()
            dead = self._dead
        return held[~np.isin(held, dead)] if dead.size else held

    def __contains__(self, tracklet_id: object) -> bool:
        if not isinstance(tracklet_id, int | np.integer):
            return False
        return bool(np.any(self.ids() == int(tracklet_id)))

    def check_encoder(self, encoder_version: str) -> None:
        """Raise EncoderMismatchError unless ``encoder_version`` is this index's."""
        if encoder_version == self.encoder_version:
            return
        mine = self.encoder_version
        raise EncoderMismatchError(
            f"the index holds embeddings of encoder {mine!r}, not {encoder_version!r}: open "
            f"the generation of this encoder (polypindex.indexer.generations.open_or_rebuild "
            f"with its version) or serve with encoder {mine!r}"
        )

    def nlist(self) -> int | None:
        """The IVF index's number of inverted lists (``None`` for other kinds)."""
        return self._backend.describe().get("nlist")

    # -- structure -------------------------------------------------------------------

    def _kind_for(self, n_vectors: int) -> str:
        return self._policy.kind_for(n_vectors) if self.auto_kind else self._kind

    def _set_tombstones(self, tombstones: set[int]) -> None:
        self._tombstones = tombstones
        self._dead = np.array(sorted(tombstones), dtype=np.int64)

    def _target_kind(self, live: int) -> str:
        """The kind for ``live`` vectors, with hysteresis: a collection grows into the
        next kind at its threshold but shrinks out of it only 10 % below, so deletes
        around a threshold do not rebuild the index back and forth."""
        if self._kind_for(int(live / SHRINK_MARGIN)) == self._kind:
            return self._kind
        return self._kind_for(live)

    def needs_compaction(self) -> bool:
        """Whether :meth:`compact` is due: enough tombstones, or a size that calls for
        another kind."""
        held, dead = len(self._backend), len(self._tombstones)
        if held and self._target_kind(held - dead) != self._kind:
            return True
        return dead > 0 and (held < COMPACT_SMALL or dead >= COMPACT_FRACTION * held)

    def adopt(self, other: IndexCore) -> None:
        """Take over the vectors, tombstones and kind of ``other`` (an index of the same
        encoder and dim, e.g. rebuilt from the store); the high-water mark is the higher
        of the two."""
        with self._compacting, self.lock:
            self._backend, self._kind = other._backend, other._kind
            self._set_tombstones(set(other._tombstones))
            self._max_row_id = max(self._max_row_id, other._max_row_id)
            self.corrupt = None
            self.changes += 1
            self.structural_changes += 1

    def compact(self, *, force: bool = False) -> bool:
        """Rebuild the backend without its tombstones, as the kind its size calls for,
        beside the live one, then swap it in; ``True`` if it did.

        Searches go on against the live backend all the while: the vectors are copied
        in chunks under the shared lock, the new backend is built with no lock held,
        adds that arrive meanwhile are replayed into it, and only the swap takes the
        lock alone. One compaction runs at a time.
        """
        with self._compacting:
            with self.lock:
                if not (force or self.needs_compaction()):
                    return False
                live, n0, dead = self._backend, len(self._backend), set(self._tombstones)
                self._journal = []
            try:
                ids_parts, vec_parts = [], []
                for start in range(0, n0, _COPY_CHUNK):
                    with self.lock.read():
                        ids, vectors = _copy_range(live, start, min(n0, start + _COPY_CHUNK))
                    ids_parts.append(ids)
                    vec_parts.append(vectors)
                held = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
                vectors = (
                    np.concatenate(vec_parts) if vec_parts else np.zeros((0, self.dim), np.float32)
                )
                keep = ~np.isin(held, np.fromiter(dead, np.int64, count=len(dead)))
                kind = self._target_kind(int(keep.sum()))
                built = backend_class(kind).build(self.dim, self._policy, held[keep], vectors[keep])
                del held, vectors
                replayed = 0
                while True:  # replay adds made meanwhile, the lock free while most are added
                    with self.lock.read():
                        journal = list(self._journal or [])
                    if len(journal) - replayed <= 1:
                        break
                    for ids, vecs in journal[replayed:]:
                        built.add(ids, vecs)
                    replayed = len(journal)
                with self.lock:
                    for ids, vecs in (self._journal or [])[replayed:]:
                        built.add(ids, vecs)
                    self._backend, self._kind = place(built, self.device), kind
                    self._set_tombstones(self._tombstones - dead)
                    self.changes += 1
                    self.structural_changes += 1
            finally:
                with self.lock:
                    self._journal = None
        logger.info(
            "index %s: compacted to %s with %d vectors (%d tombstones dropped)",
            self.encoder_version,
            kind,
            len(self),
            len(dead),
        )
        return True
