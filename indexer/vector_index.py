"""The FAISS vector index, derived from the SQL store (SPEC §8).

Inner product over L2-normalised float32 vectors (= cosine similarity), with
the store's tracklet ids as FAISS ids. A snapshot on disk is two files written
atomically: ``index.faiss`` and the JSON sidecar ``index_infos.json`` saying how
and by which encoder the index was built and the highest row id it has seen.
:meth:`VectorIndex.open_or_rebuild` loads the snapshot and catches up from the
store, so the index always ends up holding exactly the store's ids of its
encoder version.

Only the exact ``flat_ip`` kind exists for now; :func:`_new_faiss_index` and
:attr:`VectorIndex.supports_remove` are the seams for HNSW / IVF (which cannot
remove ids and need a rebuild) and GPU copies later.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from model.config import FragmentConfig, PreprocessConfig
from model.errors import ConfigError, EncoderMismatchError, IndexNotReadyError, InvalidInputError

if TYPE_CHECKING:
    from indexer.store import Store

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index_infos.json"
SIDECAR_FORMAT_VERSION = 1
KINDS = ("flat_ip",)
_SYNC_BATCH = 4096


def _new_faiss_index(kind: str, dim: int) -> Any:
    """A new, empty FAISS index of ``kind`` with external int64 ids."""
    if kind == "flat_ip":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    raise ConfigError(f"unknown index kind {kind!r}; known kinds: {list(KINDS)}")


def _l2_normalize(vectors: np.ndarray, what: str) -> np.ndarray:
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms <= 0):
        bad = np.flatnonzero(norms[:, 0] <= 0)[:5].tolist()
        raise InvalidInputError(f"{what}: zero vector(s) at row(s) {bad} cannot be normalised")
    x /= norms
    return x


def _write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, np.ndarray):
                data.tofile(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class VectorIndex:
    """Exact inner-product index over L2-normalised float32 vectors, keyed by tracklet id.

    Args:
        dim: embedding dimension ``D``.
        encoder_version: the encoder whose embeddings this index holds; vectors of
            any other version are refused.
        kind: index structure; only ``"flat_ip"`` (exact) for now.
        preprocess: the crop settings of the encoder (recorded in the sidecar).
        fragment: the fragment settings used to embed tracklets (recorded in the sidecar).
        max_row_id: highest store row id already seen (a high-water mark, kept
            after removals since store ids are never reused).
    """

    def __init__(
        self,
        dim: int,
        encoder_version: str,
        *,
        kind: str = "flat_ip",
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
        max_row_id: int = 0,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if not encoder_version:
            raise ConfigError("encoder_version must be a non-empty string")
        self._index = _new_faiss_index(kind, dim)
        self._dim = dim
        self._encoder_version = encoder_version
        self._kind = kind
        self.preprocess = preprocess
        self.fragment = fragment
        self._max_row_id = int(max_row_id)
        self._lock = threading.RLock()

    # -- properties ----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def encoder_version(self) -> str:
        return self._encoder_version

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def max_id(self) -> int:
        """Highest row id this index has seen (0 when none): catch-up starts after it."""
        return self._max_row_id

    @property
    def supports_remove(self) -> bool:
        """Whether ids can be removed in place (HNSW and GPU indexes cannot)."""
        return self._kind == "flat_ip"

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self._kind!r}, dim={self._dim}, "
            f"encoder_version={self._encoder_version!r}, size={len(self)})"
        )

    def ids(self) -> np.ndarray:
        """The ids held: int64 ``(N,)`` in insertion order."""
        with self._lock:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def __contains__(self, tracklet_id: object) -> bool:
        if not isinstance(tracklet_id, int | np.integer):
            return False
        return bool(np.any(self.ids() == int(tracklet_id)))

    # -- updates -------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, encoder_version: str | None = None) -> None:
        """Add vectors under their store ids.

        Args:
            ids: int64 ``(N,)``, unique and not already in the index.
            vectors: float32 ``(N, D)``; L2-normalised here.
            encoder_version: the encoder that made the vectors; refused if it is
                not this index's.

        Raises:
            EncoderMismatchError: ``encoder_version`` differs from the index's.
            InvalidInputError: wrong shape or dim, duplicate ids, zero/NaN vectors.
        """
        if encoder_version is not None and encoder_version != self._encoder_version:
            raise EncoderMismatchError(
                f"cannot add embeddings of encoder {encoder_version!r} to the index of "
                f"encoder {self._encoder_version!r}: versions are never mixed in one index"
            )
        id_arr = np.asarray(ids)
        if id_arr.ndim != 1 or (id_arr.size and not np.issubdtype(id_arr.dtype, np.integer)):
            raise InvalidInputError(
                f"ids must be a 1-D integer array, got {id_arr.dtype} {id_arr.shape}"
            )
        id_arr = id_arr.astype(np.int64)
        vec = np.asarray(vectors)
        if vec.ndim != 2 or vec.shape[1] != self._dim:
            raise InvalidInputError(f"vectors must have shape (N, {self._dim}), got {vec.shape}")
        if len(vec) != len(id_arr):
            raise InvalidInputError(f"{len(id_arr)} ids but {len(vec)} vectors")
        if id_arr.size == 0:
            return
        if np.any(id_arr < 0):
            raise InvalidInputError("ids must be non-negative (FAISS uses -1 as padding)")
        if len(np.unique(id_arr)) != len(id_arr):
            raise InvalidInputError("ids contain duplicates")
        normalized = _l2_normalize(vec, "vectors")
        with self._lock:
            present = id_arr[np.isin(id_arr, self.ids())]
            if present.size:
                raise InvalidInputError(f"ids already in the index: {present[:10].tolist()}")
            self._index.add_with_ids(normalized, id_arr)
            self._max_row_id = max(self._max_row_id, int(id_arr.max()))

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        id_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if id_arr.size == 0:
            return 0
        if not self.supports_remove:
            raise NotImplementedError(f"index kind {self._kind!r} cannot remove ids; rebuild it")
        with self._lock:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(id_arr)))

    # -- queries -------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: Collection[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` neighbours by cosine similarity.

        Args:
            queries: float32 ``(Q, D)`` (or ``(D,)`` for one query); L2-normalised here.
            k: neighbours per query (fewer come back when the index is smaller).
            exclude_ids: ids never returned (e.g. the query's own procedure).

        Returns:
            Per query, ``(id, score)`` pairs by decreasing score; no ``-1`` padding.
            An empty index gives empty lists.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise InvalidInputError(
                f"queries must have shape (Q, {self._dim}), got {np.asarray(queries).shape}"
            )
        if not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        if len(q) == 0:
            return []
        q = _l2_normalize(q, "queries")
        with self._lock:
            n = len(self)
            if n == 0:
                return [[] for _ in range(len(q))]
            kk = int(min(k, n))
            if exclude_ids:
                excluded = np.fromiter((int(i) for i in exclude_ids), dtype=np.int64)
                inner = faiss.IDSelectorBatch(excluded)
                selector = faiss.IDSelectorNot(inner)
                params = faiss.SearchParameters()
                params.sel = selector
                scores, labels = self._index.search(q, kk, params=params)
                del params, selector, inner  # the selectors must outlive the search
            else:
                scores, labels = self._index.search(q, kk)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(labels, scores, strict=True)
        ]

    # -- persistence ---------------------------------------------------------------

    def infos(self) -> dict[str, Any]:
        """The sidecar content describing this index."""
        return {
            "format_version": SIDECAR_FORMAT_VERSION,
            "kind": self._kind,
            "metric": "inner_product",
            "normalized": True,
            "encoder_version": self._encoder_version,
            "dim": self._dim,
            "count": len(self),
            "max_row_id": self._max_row_id,
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "fragment": self.fragment.to_dict() if self.fragment else None,
            "created_at": datetime.now(UTC).isoformat(),
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` then ``index_infos.json`` atomically into ``directory``.

        Each file goes to a temp file in the same folder, is fsynced and renamed
        over the old one. A crash between the two leaves a sidecar whose count
        does not match the index; :meth:`load` refuses that pair and
        :meth:`open_or_rebuild` rebuilds from the store.

        Returns:
            The path of ``index.faiss``.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = faiss.serialize_index(self._index)  # a CPU index; GPU ones are copied back first
            infos = self.infos()
        index_path = out / INDEX_FILE
        _write_atomic(index_path, np.ascontiguousarray(data))
        _write_atomic(
            out / SIDECAR_FILE, (json.dumps(infos, indent=2, sort_keys=True) + "\n").encode()
        )
        return index_path

    @staticmethod
    def read_infos(directory: str | Path) -> dict[str, Any] | None:
        """The sidecar of a snapshot, or ``None`` if there is none or it is unreadable."""
        path = Path(directory) / SIDECAR_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("unreadable index sidecar %s", path)
            return None
        return data if isinstance(data, dict) else None

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        """Load a snapshot written by :meth:`save`.

        Raises:
            IndexNotReadyError: no snapshot, an unreadable one, or an index file
                that does not match its sidecar.
        """
        folder = Path(directory)
        infos = cls.read_infos(folder)
        index_path = folder / INDEX_FILE
        if infos is None or not index_path.is_file():
            raise IndexNotReadyError(
                f"no index snapshot in {folder} (expected {INDEX_FILE} and {SIDECAR_FILE})"
            )
        try:
            kind = str(infos["kind"])
            dim = int(infos["dim"])
            encoder_version = str(infos["encoder_version"])
            count = int(infos["count"])
            max_row_id = int(infos.get("max_row_id", 0))
            preprocess = (
                PreprocessConfig.from_dict(infos["preprocess"]) if infos.get("preprocess") else None
            )
            fragment = (
                FragmentConfig.from_dict(infos["fragment"]) if infos.get("fragment") else None
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexNotReadyError(f"{folder / SIDECAR_FILE}: malformed sidecar: {exc}") from exc
        try:
            raw = faiss.deserialize_index(np.fromfile(index_path, dtype=np.uint8))
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexNotReadyError(f"cannot read FAISS index {index_path}: {exc}") from exc
        if raw.d != dim or raw.ntotal != count:
            raise IndexNotReadyError(
                f"{index_path} ({raw.ntotal} vectors of dim {raw.d}) does not match its sidecar "
                f"({count} vectors of dim {dim}); an interrupted save? rebuild it from the store"
            )
        index = cls(dim, encoder_version, kind=kind, preprocess=preprocess, fragment=fragment)
        if not isinstance(raw, faiss.IndexIDMap2):
            raise IndexNotReadyError(
                f"{index_path}: unexpected FAISS index type {type(raw).__name__}"
            )
        index._index = raw
        ids = index.ids()
        index._max_row_id = max(max_row_id, int(ids.max()) if ids.size else 0)
        return index

    @classmethod
    def open_or_rebuild(
        cls,
        directory: str | Path,
        store: Store,
        encoder_version: str,
        dim: int,
        *,
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
        save: bool = False,
    ) -> VectorIndex:
        """The index of ``encoder_version``, equal to the store's ids of that version.

        Loads the snapshot in ``directory`` if its sidecar names the same encoder
        version and dim (else starts empty), then :meth:`sync_with_store`.

        Args:
            directory: the index folder (may not exist yet).
            store: the source of truth.
            encoder_version: the encoder whose embeddings the index must hold.
            dim: their dimension.
            preprocess: recorded in the sidecar (taken from the snapshot if not given).
            fragment: recorded in the sidecar (taken from the snapshot if not given).
            save: write the snapshot back when syncing changed the index.
        """
        folder = Path(directory)
        index: VectorIndex | None = None
        infos = cls.read_infos(folder)
        if infos is None:
            logger.info("no index snapshot in %s: building from the store", folder)
        elif infos.get("encoder_version") != encoder_version or infos.get("dim") != dim:
            logger.warning(
                "index snapshot in %s is for encoder %r (dim %s), not %r (dim %s): rebuilding from the store",
                folder,
                infos.get("encoder_version"),
                infos.get("dim"),
                encoder_version,
                dim,
            )
        else:
            try:
                index = cls.load(folder)
            except IndexNotReadyError as exc:
                logger.warning("%s: rebuilding from the store", exc)
        if index is None:
            index = cls(dim, encoder_version, preprocess=preprocess, fragment=fragment)
        else:
            index.preprocess = preprocess or index.preprocess
            index.fragment = fragment or index.fragment
        added, removed = index.sync_with_store(store)
        if save and (added or removed or not (folder / INDEX_FILE).is_file()):
            index.save(folder)
        return index

    def sync_with_store(self, store: Store) -> tuple[int, int]:
        """Make the index hold exactly the store's ids of this encoder version.

        Catches up with rows after :attr:`max_id`, removes ids the store no longer
        has (deleted or replaced procedures), and adds any stored id the index
        lacks (rows committed out of id order).

        Returns:
            ``(added, removed)`` counts.
        """
        added = 0
        with self._lock:
            for ids, vectors in store.iter_embeddings(
                self._encoder_version, after_id=self._max_row_id
            ):
                self._check_store_dim(vectors)
                fresh = ~np.isin(ids, self.ids())
                self.add(ids[fresh], vectors[fresh])
                added += int(fresh.sum())
            stored = store.tracklet_ids(self._encoder_version)
            held = self.ids()
            removed = (
                self.remove(np.setdiff1d(held, stored, assume_unique=True)) if held.size else 0
            )
            missing = np.setdiff1d(stored, held, assume_unique=True)
            for start in range(0, len(missing), _SYNC_BATCH):
                ids, vectors = store.embeddings_for_ids(
                    missing[start : start + _SYNC_BATCH].tolist()
                )
                if ids.size:
                    self._check_store_dim(vectors)
                    self.add(ids, vectors)
                    added += len(ids)
        if added or removed:
            logger.info(
                "index %s: %d vectors added, %d removed from the store",
                self._encoder_version,
                added,
                removed,
            )
        return added, removed

    def _check_store_dim(self, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self._dim:
            raise EncoderMismatchError(
                f"the store holds embeddings of encoder {self._encoder_version!r} with dim "
                f"{vectors.shape[1]}, but the index has dim {self._dim}"
            )
