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
measured by ``benchmarks/index_search.py``. HNSW and IVF remove ids by rebuilding
from the vectors they keep (IVF re-trains its quantizer then). Exact search runs
on a GPU copy when faiss-gpu and a GPU are present (:attr:`IndexPolicy.device`,
:mod:`polypindex.indexer.vectors.gpu`), on the CPU otherwise; the CPU index stays
the master copy that is saved.

A snapshot on disk is two files written atomically: ``index.faiss`` (the backend's
bytes) and the JSON sidecar ``index_infos.json`` saying how and by which encoder
the index was built and the highest row id it has seen. Where snapshots live and
how an index is kept equal to the store is :mod:`polypindex.indexer.generations`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from polypindex.indexer.vectors.base import VectorBackend
from polypindex.indexer.vectors.gpu import place, resolve_device
from polypindex.indexer.vectors.policy import EXACT, IndexPolicy
from polypindex.indexer.vectors.registry import backend_class
from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.errors import (
    ConfigError,
    EncoderMismatchError,
    IndexNotReadyError,
    InvalidInputError,
)
from polypindex.model.files import atomic_write

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index_infos.json"
SIDECAR_FORMAT_VERSION = 1


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


class VectorIndex:
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
        lock: held by every read and change; store sync holds it across its steps.
        directory: the generation folder this index was opened from or saved to.
    """

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
        self.lock = threading.RLock()

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
        """Whether ids are removed in place; HNSW and IVF remove by rebuilding."""
        return self._backend.supports_remove

    def __len__(self) -> int:
        return len(self._backend)

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self._kind!r}, dim={self.dim}, "
            f"encoder_version={self.encoder_version!r}, size={len(self)})"
        )

    def ids(self) -> np.ndarray:
        """The ids held: int64 ``(N,)`` in insertion order."""
        with self.lock:
            return self._backend.ids()

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

    def _restructure(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the backend by a new one of ``kind`` holding ``vectors`` (normalised)."""
        built = backend_class(kind).build(self.dim, self._policy, ids, vectors)
        self._backend = place(built, self.device)
        self._kind = kind
        logger.info("index %s: now %s with %d vectors", self.encoder_version, kind, len(ids))

    def adopt(self, other: VectorIndex) -> None:
        """Take over the vectors and kind of ``other`` (an index of the same encoder and
        dim, e.g. rebuilt from the store); the high-water mark is the higher of the two."""
        with self.lock:
            self._backend, self._kind = other._backend, other._kind
            self._max_row_id = max(self._max_row_id, other._max_row_id)

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
        if encoder_version is not None and encoder_version != self.encoder_version:
            raise EncoderMismatchError(
                f"cannot add embeddings of encoder {encoder_version!r} to the index of "
                f"encoder {self.encoder_version!r}: versions are never mixed in one index"
            )
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
        if id_arr.size == 0:
            return
        if np.any(id_arr < 0):
            raise InvalidInputError("ids must be non-negative (FAISS uses -1 as padding)")
        if len(np.unique(id_arr)) != len(id_arr):
            raise InvalidInputError("ids contain duplicates")
        normalized = _l2_normalize(vec, "vectors")
        with self.lock:
            present = id_arr[np.isin(id_arr, self.ids())]
            if present.size:
                raise InvalidInputError(f"ids already in the index: {present[:10].tolist()}")
            new_kind = self._kind_for(len(self) + len(id_arr))
            if new_kind == self._kind:
                self._backend.add(id_arr, normalized)
            elif len(self) == 0:
                self._restructure(new_kind, id_arr, normalized)
            else:
                old_ids, old_vectors = self._backend.vectors()
                self._restructure(
                    new_kind,
                    np.concatenate([old_ids, id_arr]),
                    np.concatenate([old_vectors, normalized]),
                )
            self._max_row_id = max(self._max_row_id, int(id_arr.max()))

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed.

        ``flat_ip`` removes in place; ``hnsw_ip`` rebuilds its graph and ``ivf_ip``
        re-trains its quantizer from the vectors they keep (time grows with the
        collection: delete in batches). An automatically chosen kind that the
        smaller collection no longer calls for is rebuilt as the new kind at once.
        """
        id_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if id_arr.size == 0:
            return 0
        with self.lock:
            gone = np.isin(self.ids(), id_arr)
            removed = int(gone.sum())
            if not removed:
                return 0
            kind = self._kind_for(len(self) - removed)
            if kind == self._kind:
                self._backend.remove(id_arr)
            else:
                held, vectors = self._backend.vectors()
                self._restructure(kind, held[~gone], vectors[~gone])
            return removed

    # -- queries -------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: Collection[int] | None = None,
        *,
        encoder_version: str | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` neighbours by cosine similarity.

        Args:
            queries: float32 ``(Q, D)`` (or ``(D,)`` for one query); L2-normalised here.
            k: neighbours per query (fewer come back when the index is smaller).
            exclude_ids: ids never returned (e.g. the query's own procedure).
            encoder_version: the encoder that made the queries; when given it must be
                this index's (EncoderMismatchError otherwise).

        Returns:
            Per query, ``(id, score)`` pairs by decreasing score; no ``-1`` padding.
            An empty index gives empty lists.
        """
        if encoder_version is not None:
            self.check_encoder(encoder_version)
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(
                f"queries must have shape (Q, {self.dim}), got {np.asarray(queries).shape}"
            )
        if not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        if len(q) == 0:
            return []
        q = _l2_normalize(q, "queries")
        excluded = np.fromiter((int(i) for i in exclude_ids), np.int64) if exclude_ids else None
        with self.lock:
            n = len(self)
            if n == 0:
                return [[] for _ in range(len(q))]
            scores, labels = self._backend.search(q, int(min(k, n)), excluded)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(labels, scores, strict=True)
        ]

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
            "max_row_id": self._max_row_id,
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "fragment": self.fragment.to_dict() if self.fragment else None,
            "created_at": datetime.now(UTC).isoformat(),
        }

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``index.faiss`` then ``index_infos.json`` atomically into ``directory``.

        Each file goes to a temp file in the same folder, is fsynced and renamed
        over the old one. A crash between the two leaves a sidecar whose count
        does not match the index; :meth:`load` refuses that pair and
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
        out.mkdir(parents=True, exist_ok=True)
        with self.lock:
            data = self._backend.serialise()  # the CPU master copy
            infos = self.infos()
        index_path = atomic_write(out / INDEX_FILE, lambda fh: fh.write(data))
        atomic_write(out / SIDECAR_FILE, json.dumps(infos, indent=2, sort_keys=True) + "\n")
        self.directory = out
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
            IndexNotReadyError: no snapshot, an unreadable one, or an index file
                that does not match its sidecar.
            EncoderMismatchError: the snapshot is of another encoder version.
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
            stored_version = str(infos["encoder_version"])
            count = int(infos["count"])
            max_row_id = int(infos.get("max_row_id", 0))
            auto = bool(infos.get("auto_kind", False))
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
        try:
            backend = backend_class(kind).load(index_path.read_bytes(), policy)
        except (ConfigError, IndexNotReadyError, OSError) as exc:
            raise IndexNotReadyError(
                f"cannot read index {index_path} of kind {kind!r}: {exc}"
            ) from exc
        if backend.dim != dim or len(backend) != count:
            raise IndexNotReadyError(
                f"{index_path} ({len(backend)} vectors of dim {backend.dim}) does not match its "
                f"sidecar ({count} vectors of dim {dim}); an interrupted save? rebuild it from "
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
        ids = index.ids()
        index._max_row_id = max(max_row_id, int(ids.max()) if ids.size else 0)
        index.directory = folder
        return index
