"""The vector index the rest of PolypIndex uses: :class:`VectorIndex` (docs/store.md).

Inner product over L2-normalised float32 vectors (= cosine similarity), with the
store's tracklet ids as ids, refusing vectors and queries of another encoder
version. What holds the vectors is a backend of the registry
(:mod:`polypindex.indexer.vectors.registry`), by kind: ``flat_ip`` is exact;
``hnsw_ip`` (HNSW graph) is approximate and is chosen automatically once the
collection reaches :attr:`IndexPolicy.approximate_threshold` vectors; ``ivf_ip``
(inverted file, k-means quantizer trained on the vectors it is built from) builds
in seconds where HNSW takes minutes, but needs a large ``nprobe`` for high recall
on embeddings like ours, so it is only chosen automatically when
:attr:`IndexPolicy.ivf_threshold` is set. Recall@10 against exact search is
measured by ``benchmarks/index_search.py``.

Removals are tombstones: the ids leave every answer at once (a FAISS id selector
at search time) and the vectors stay until :meth:`VectorIndex.compact` builds a
new backend beside the live one and swaps it in; searches go on meanwhile. The
index is locked by a readers-writer lock (:mod:`.rwlock`): searches share it,
changes take it alone and only for as long as the change itself. Exact search runs
on a GPU copy when faiss-gpu and a GPU are present (:attr:`IndexPolicy.device`,
:mod:`polypindex.indexer.vectors.gpu`), on the CPU otherwise; the CPU index stays
the master copy that is saved.

A snapshot on disk is two files written atomically: ``index.faiss`` (the backend's
bytes) and the JSON sidecar ``index_infos.json`` saying how and by which encoder
the index was built, the highest row id it has seen, its tombstones and the
checksum of ``index.faiss`` (:mod:`.snapshot`: a file whose bytes differ is refused). Where snapshots live and
how an index is kept equal to the store is :mod:`polypindex.indexer.generations`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.vectors.core import IndexCore, cpu_backend
from polypindex.indexer.vectors.gpu import place
from polypindex.indexer.vectors.policy import EXACT, IndexPolicy
from polypindex.indexer.vectors.query import (
    SMALL_ALLOWED,
    IndexCorruptError,
    check_queries,
    checked_hits,
    exact_subset,
    id_array,
    l2_normalize,
)
from polypindex.indexer.vectors.registry import backend_class
from polypindex.indexer.vectors.snapshot import (
    INDEX_FILE,
    SIDECAR_FILE,
    SIDECAR_FORMAT_VERSION,
    read_infos,
    read_verified,
    write_snapshot,
)
from polypindex.model.core.errors import (
    ConfigError,
    EncoderMismatchError,
    IndexNotReadyError,
    InvalidInputError,
)
from polypindex.model.data.config import FragmentConfig, PreprocessConfig

logger = logging.getLogger(__name__)

__all__ = ["VectorIndex", "recorded_settings"]


def recorded_settings(
    infos: dict[str, Any],
) -> tuple[IndexPolicy, PreprocessConfig | None, FragmentConfig | None]:
    """The policy (the defaults where none is recorded), crop and fragment settings a
    sidecar records.

    Raises:
        KeyError, TypeError, ValueError: malformed settings.
    """
    policy = IndexPolicy.from_dict(infos.get("policy") or {})
    preprocess = (
        PreprocessConfig.from_dict(infos["preprocess"]) if infos.get("preprocess") else None
    )
    fragment = FragmentConfig.from_dict(infos["fragment"]) if infos.get("fragment") else None
    return policy, preprocess, fragment


class VectorIndex(IndexCore):
    """Inner-product index over L2-normalised float32 vectors, keyed by tracklet id.

    Args:
        dim: embedding dimension ``D``.
        encoder_version: the encoder whose embeddings this index holds; vectors and
            queries of any other version are refused.
        kind: a registered kind (``"flat_ip"`` exact, ``"hnsw_ip"`` / ``"ivf_ip"``
            approximate), or ``None`` to choose by size with ``policy`` (exact below
            its threshold, HNSW from it on, switching as the collection grows or shrinks).
        policy: thresholds, HNSW/IVF parameters and device.
        preprocess: the crop settings of the encoder (recorded in the sidecar).
        fragment: the fragment settings used to embed tracklets (recorded in the sidecar).
        max_row_id: highest store row id already seen (a high-water mark, kept
            after removals since store ids are never reused).

    Attributes:
        dim: the embedding dimension (fixed, like the next three).
        encoder_version: the encoder whose embeddings this index holds.
        auto_kind: whether the kind follows the collection size (``kind=None``).
        device: where exact searches run, ``"cpu"`` or ``"gpu"`` (from the policy).
        lock: a readers-writer lock (:mod:`.rwlock`): searches and snapshots hold it
            shared, changes alone (``with index.lock:``).
        directory: the generation folder this index was opened from or saved to.
        background_upkeep: ``False`` (the default: command line, indexer): a removal or
            an add that makes a compaction due runs :meth:`compact` at once. ``True``
            (the service): an upkeep thread calls :meth:`compact`, requests never do.
        corrupt: why the index is known to be corrupt (a search returned a score no
            cosine can have), else ``None``.
        changes: bumped by every add, removal and swap.
        structural_changes: bumped by every add and swap, not by removals (tombstones
            are caught up from the store when a snapshot is opened, so an upkeep
            thread need not write a large snapshot for a delete).
        rebuilt_reason: why this index was rebuilt from the store when it was opened
            (a missing, torn or corrupt snapshot), else ``None``.
    """

    # -- updates -------------------------------------------------------------------

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        id_arr = np.asarray(ids)
        if id_arr.ndim != 1 or (id_arr.size and not np.issubdtype(id_arr.dtype, np.integer)):
            raise InvalidInputError(
                f"ids must be a 1-D integer array, got {id_arr.dtype} {id_arr.shape}"
            )
        id_arr = id_arr.astype(np.int64)
        vec = np.asarray(vectors)
        if vec.ndim != 2 or vec.shape[1] != self.dim:
            raise InvalidInputError(f"vectors must have shape (N, {self.dim}), got {vec.shape}")
        if len(vec) != len(id_arr):
            raise InvalidInputError(f"{len(id_arr)} ids but {len(vec)} vectors")
        if np.any(id_arr < 0):
            raise InvalidInputError("ids must be non-negative (FAISS uses -1 as padding)")
        if len(np.unique(id_arr)) != len(id_arr):
            raise InvalidInputError("ids contain duplicates")
        return id_arr, vec

    def add(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        encoder_version: str | None = None,
        *,
        skip_present: bool = False,
    ) -> int:
        """Add vectors under their store ids.

        Args:
            ids: int64 ``(N,)``, unique and not already in the index.
            vectors: float32 ``(N, D)``; L2-normalised here.
            encoder_version: the encoder that made the vectors; refused if it is
                not this index's.
            skip_present: leave out ids already held instead of refusing them (a
                catch-up racing another writer of the same rows).

        Returns:
            How many vectors were added.

        Raises:
            EncoderMismatchError: ``encoder_version`` differs from the index's.
            InvalidInputError: wrong shape or dim, duplicate ids, zero/NaN vectors.
        """
        if encoder_version is not None and encoder_version != self.encoder_version:
            raise EncoderMismatchError(
                f"cannot add embeddings of encoder {encoder_version!r} to the index of "
                f"encoder {self.encoder_version!r}: versions are never mixed in one index"
            )
        id_arr, vec = self._checked(ids, vectors)
        if id_arr.size == 0:
            return 0
        normalized = l2_normalize(vec, "vectors")
        with self.lock:
            is_present = np.isin(id_arr, self._backend.ids())
            if is_present.any() and skip_present:
                id_arr, normalized = id_arr[~is_present], normalized[~is_present]
                if id_arr.size == 0:
                    return 0
            elif is_present.any():
                present = id_arr[is_present]
                raise InvalidInputError(f"ids already in the index: {present[:10].tolist()}")
            kind = self._kind_for(len(self) + len(id_arr))
            if len(self._backend) == 0 and kind != self._kind and self._journal is None:
                built = backend_class(kind).build(self.dim, self._policy, id_arr, normalized)
                self._backend, self._kind = place(built, self.device), kind
            else:
                self._backend.add(id_arr, normalized)
                if self._journal is not None:
                    self._journal.append((id_arr, normalized))
            self._max_row_id = max(self._max_row_id, int(id_arr.max()))
            self.changes += 1
            self.structural_changes += 1
        if not self.background_upkeep and self.needs_compaction():
            self.compact()
        return len(id_arr)

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed.

        The ids become tombstones: no search returns them from now on, and their
        vectors go at the next :meth:`compact` (at once, unless :attr:`background_upkeep`).
        """
        id_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if id_arr.size == 0:
            return 0
        with self.lock:
            hit = id_arr[np.isin(id_arr, self._backend.ids())]
            new = {int(i) for i in hit} - self._tombstones
            if not new:
                return 0
            self._set_tombstones(self._tombstones | new)
            self.changes += 1
        if not self.background_upkeep and self.needs_compaction():
            self.compact()
        return len(new)

    # -- queries -------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: Collection[int] | np.ndarray | None = None,
        *,
        encoder_version: str | None = None,
        allowed_ids: Collection[int] | np.ndarray | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` neighbours by cosine similarity (all queries searched together).

        Args:
            queries: float32 ``(Q, D)`` (or ``(D,)`` for one query); L2-normalised here.
            k: neighbours per query (fewer come back when the index is smaller).
            exclude_ids: ids never returned (e.g. the query's own procedure).
            encoder_version: the encoder that made the queries; when given it must be
                this index's (EncoderMismatchError otherwise).
            allowed_ids: when given, only these ids are returned (a FAISS id selector;
                a small set is scored exactly over its own vectors), as many as ``k``
                of them when the index holds that many.

        Returns:
            Per query, ``(id, score)`` pairs by decreasing score; no ``-1`` padding.
            An empty index gives empty lists.

        Raises:
            IndexCorruptError: a score that no cosine can have (:attr:`corrupt` is set).
        """
        if encoder_version is not None:
            self.check_encoder(encoder_version)
        q = check_queries(queries, self.dim, k)
        if len(q) == 0:
            return []
        q = l2_normalize(q, "queries")
        excluded, allowed = id_array(exclude_ids), id_array(allowed_ids)
        empty: list[list[tuple[int, float]]] = [[] for _ in range(len(q))]
        with self.lock.read():
            n = len(self)
            skip = self._dead
            if excluded is not None and excluded.size:
                skip = np.union1d(skip, excluded)
            if n == 0:
                return empty
            if allowed is None:
                scores, labels = self._backend.search(
                    q, int(min(k, n)), skip if skip.size else None
                )
            else:
                allowed = np.setdiff1d(allowed, skip, assume_unique=True)
                if allowed.size == 0:
                    return empty
                scores, labels = self._search_allowed(q, int(min(k, n, allowed.size)), allowed)
        try:
            return checked_hits(scores, labels, f"index {self.encoder_version!r}")
        except IndexCorruptError as exc:
            self.corrupt = str(exc)
            logger.error("%s", exc)
            raise

    def _search_allowed(
        self, q: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` among ``allowed`` ids (tombstones and exclusions already removed)."""
        cpu = cpu_backend(self._backend)
        if self._kind != EXACT and allowed.size <= SMALL_ALLOWED and hasattr(cpu, "vectors_for"):
            ids, vectors = cpu.vectors_for(allowed)
            return exact_subset(q, k, ids, vectors)
        if hasattr(cpu, "vectors_for"):  # a FAISS backend: an id selector
            scores, labels = cpu.search(q, k, None, allow_ids=allowed)
            return scores, labels
        held, vectors = self._backend.vectors()
        keep = np.isin(held, allowed)
        return exact_subset(q, k, held[keep], vectors[keep])

    # -- persistence ---------------------------------------------------------------

    def infos(self) -> dict[str, Any]:
        """The sidecar content describing this index (with the backend's description)."""
        return {
            "metric": "inner_product",
            "nlist": None,
            **self._backend.describe(),
            "format_version": SIDECAR_FORMAT_VERSION,
            "kind": self._kind,
            "auto_kind": self.auto_kind,
            "policy": self._policy.to_dict(),
            "normalized": True,
            "encoder_version": self.encoder_version,
            "dim": self.dim,
            "count": len(self),
            "vectors_held": len(self._backend),
            "tombstones": self._dead.tolist(),
            "max_row_id": self._max_row_id,
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "fragment": self.fragment.to_dict() if self.fragment else None,
            "created_at": datetime.now(UTC).isoformat(),
        }

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``index.faiss`` then ``index_infos.json`` (with the checksum of the
        index bytes) atomically into ``directory``.

        The bytes are taken under the shared lock (searches go on; changes wait), then
        written with no lock held. Each file goes to a temp file in the same folder, is
        fsynced and renamed over the old one. A crash between the two leaves a sidecar
        whose checksum does not match the index; :meth:`load` refuses that pair and
        :func:`~polypindex.indexer.generations.open_or_rebuild` rebuilds from the store.

        Args:
            directory: the exact folder; default the generation folder this index
                was opened from (:attr:`directory`).

        Returns:
            The path of ``index.faiss``.
        """
        if directory is None:
            if self.directory is None:
                raise ConfigError("save() needs a directory: this index was not opened from one")
            directory = self.directory
        out = Path(directory)
        with self.lock.read():
            data = self._backend.serialise()  # the CPU master copy
            infos = self.infos()
        index_path = write_snapshot(out, data, infos)
        self.directory = out
        return index_path

    @staticmethod
    def read_infos(directory: str | Path) -> dict[str, Any] | None:
        """The sidecar of a snapshot, or ``None`` if there is none or it is unreadable."""
        return read_infos(directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        encoder_version: str | None = None,
        *,
        policy: IndexPolicy | None = None,
    ) -> VectorIndex:
        """Load a snapshot written by :meth:`save` (an exact generation folder).

        Args:
            directory: the folder holding ``index.faiss`` and ``index_infos.json``.
            encoder_version: when given, the snapshot must be of this encoder.
            policy: overrides the policy recorded in the sidecar.

        Raises:
            SnapshotError: the index file is missing or its bytes do not match the
                checksum in the sidecar (or the sidecar has none).
            IndexNotReadyError: no snapshot, an unreadable one, or an index file
                that does not match its sidecar.
            EncoderMismatchError: the snapshot is of another encoder version.
        """
        folder = Path(directory)
        infos = read_infos(folder)
        index_path = folder / INDEX_FILE
        if infos is None:
            raise IndexNotReadyError(
                f"no index snapshot in {folder} (expected {INDEX_FILE} and {SIDECAR_FILE})"
            )
        try:
            kind = str(infos["kind"])
            dim = int(infos["dim"])
            stored_version = str(infos["encoder_version"])
            count = int(infos["count"])
            held = int(infos.get("vectors_held", count))
            max_row_id = int(infos.get("max_row_id", 0))
            auto = bool(infos.get("auto_kind", False))
            tombstones = {int(t) for t in infos.get("tombstones") or []}
            recorded_policy, preprocess, fragment = recorded_settings(infos)
            policy = policy or recorded_policy
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexNotReadyError(f"{folder / SIDECAR_FILE}: malformed sidecar: {exc}") from exc
        if encoder_version is not None and stored_version != encoder_version:
            raise EncoderMismatchError(
                f"the index in {folder} holds embeddings of encoder {stored_version!r}, not "
                f"{encoder_version!r}; open the generation of {encoder_version!r} beside it, "
                f"in {folder.parent}"
            )
        _, data = read_verified(folder)
        try:
            backend = backend_class(kind).load(data, policy)
        except (ConfigError, IndexNotReadyError, OSError) as exc:
            raise IndexNotReadyError(
                f"cannot read index {index_path} of kind {kind!r}: {exc}"
            ) from exc
        if backend.dim != dim or len(backend) != held or count != held - len(tombstones):
            raise IndexNotReadyError(
                f"{index_path} ({len(backend)} vectors of dim {backend.dim}) does not match its "
                f"sidecar ({held} vectors of dim {dim}); an interrupted save? rebuild it from "
                f"the store"
            )
        index = cls(
            dim,
            stored_version,
            kind=None if auto else kind,
            policy=policy,
            preprocess=preprocess,
            fragment=fragment,
        )
        index._backend, index._kind = place(backend, index.device), kind
        ids = backend.ids()
        index._set_tombstones(tombstones & {int(i) for i in ids} if tombstones else set())
        index._max_row_id = max(max_row_id, int(ids.max()) if ids.size else 0)
        index.directory = folder
        return index
