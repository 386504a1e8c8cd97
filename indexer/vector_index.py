"""The FAISS vector index, derived from the SQL store (SPEC §8).

Inner product over L2-normalised float32 vectors (= cosine similarity), with
the store's tracklet ids as FAISS ids. A snapshot on disk is two files written
atomically: ``index.faiss`` and the JSON sidecar ``index_infos.json`` saying how
and by which encoder the index was built and the highest row id it has seen.
:meth:`VectorIndex.open_or_rebuild` loads the snapshot and catches up from the
store, so the index always ends up holding exactly the store's ids of its
encoder version.

**Generations.** Embeddings of different encoder versions never share an index:
each encoder version has its own folder, ``INDEX_ROOT/generations/<version>/``
(:func:`generation_dir`), and :meth:`VectorIndex.open_or_rebuild` takes the
index root and opens the generation of the encoder it is given.
:func:`list_generations` says which exist; searching an index with another
encoder's query raises :class:`EncoderMismatchError`.

**Kinds.** ``flat_ip`` is exact; ``hnsw_ip`` (HNSW graph, inner product) is
approximate and is chosen automatically once the collection reaches
:attr:`IndexPolicy.approximate_threshold` vectors. ``ivf_ip`` (inverted file of
flat lists, k-means coarse quantizer trained on the vectors it is built from)
builds in seconds where HNSW takes minutes, but needs a large ``nprobe`` for high
recall on embeddings like ours, so it is only chosen automatically when
:attr:`IndexPolicy.ivf_threshold` is set. Recall@10 against exact search is
measured by ``benchmarks/index_search.py``. HNSW and IVF remove ids by rebuilding from the
vectors they keep (a CPU round trip; IVF re-trains its quantizer then), and
:meth:`VectorIndex.sync_with_store` rebuilds it from the store when rows were
deleted. Exact search runs on a GPU copy when faiss-gpu and a GPU are present
(:attr:`IndexPolicy.device`), on the CPU otherwise; the CPU index stays the
master copy that is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import faiss
except ImportError as exc:  # pragma: no cover - every supported install has one of the two
    raise ImportError(
        "FAISS is not installed: install PolypIndex with the 'cpu' extra (faiss-cpu) or the "
        "'gpu' extra (faiss-gpu-cu12), e.g. `make venv EXTRAS=cpu,postgres`"
    ) from exc

from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.errors import (
    ConfigError,
    EncoderMismatchError,
    IndexNotReadyError,
    InvalidInputError,
)

if TYPE_CHECKING:
    from polypindex.indexer.store import Store

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index_infos.json"
SIDECAR_FORMAT_VERSION = 1
GENERATIONS_DIR = "generations"
KINDS = ("flat_ip", "hnsw_ip", "ivf_ip")
DEVICES = ("auto", "cpu", "gpu")
_SYNC_BATCH = 4096


@dataclass(frozen=True)
class IndexPolicy:
    """How the index structure is chosen and tuned.

    Attributes:
        approximate_threshold: from this many vectors on, an automatically chosen
            index is HNSW (approximate); below it, exact ``flat_ip``.
        ivf_threshold: from this many vectors on, an automatically chosen index is
            IVF (approximate, fast to build) instead of HNSW; ``None`` (default):
            never (HNSW gave better recall per millisecond up to 10^6 vectors).
        hnsw_m: HNSW neighbours per node (memory ≈ ``4·D + 8·M`` bytes per vector).
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width (raised to ``k`` when smaller);
            ``None`` (default): by collection size, see :meth:`ef_search_for`.
        ivf_nlist: IVF inverted lists; 0 = automatic, the power of two nearest to
            √N (at least 16, at most N) for the N vectors it is trained on.
        ivf_nprobe: IVF lists scanned per query.
        ivf_train_per_list: training sample size per list for the k-means quantizer.
        device: ``"auto"`` (GPU when faiss-gpu and a GPU are present), ``"cpu"`` or ``"gpu"``.
    """

    approximate_threshold: int = 100_000
    ivf_threshold: int | None = None
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int | None = None
    ivf_nlist: int = 0
    ivf_nprobe: int = 32
    ivf_train_per_list: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = (
            "approximate_threshold",
            "hnsw_m",
            "hnsw_ef_construction",
            "ivf_nprobe",
            "ivf_train_per_list",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"IndexPolicy.{name} must be a positive integer, got {value!r}")
        if self.hnsw_ef_search is not None and (
            not isinstance(self.hnsw_ef_search, int) or self.hnsw_ef_search < 1
        ):
            raise ConfigError(
                f"IndexPolicy.hnsw_ef_search must be None (by size) or a positive integer, "
                f"got {self.hnsw_ef_search!r}"
            )
        if self.ivf_threshold is not None and (
            not isinstance(self.ivf_threshold, int) or self.ivf_threshold < 1
        ):
            raise ConfigError(
                f"IndexPolicy.ivf_threshold must be None or a positive integer, "
                f"got {self.ivf_threshold!r}"
            )
        if not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 0:
            raise ConfigError(
                f"IndexPolicy.ivf_nlist must be 0 (automatic) or a positive integer, "
                f"got {self.ivf_nlist!r}"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"IndexPolicy.device must be one of {DEVICES}, got {self.device!r}")

    def kind_for(self, n_vectors: int) -> str:
        """The kind an automatically managed index of ``n_vectors`` uses."""
        if self.ivf_threshold is not None and n_vectors >= self.ivf_threshold:
            return "ivf_ip"
        return "hnsw_ip" if n_vectors >= self.approximate_threshold else "flat_ip"

    def ef_search_for(self, n_vectors: int) -> int:
        """HNSW ``efSearch`` for a collection of ``n_vectors`` (``hnsw_ef_search`` when set).

        By size, from ``benchmarks/index_search.py`` (recall@10 against exact search on
        clustered vectors): 256 below 250 000 vectors (recall 1.00 at 10^5), 1024 from
        there on (at 10^6: 256 → 0.91, 512 → 0.975, 1024 → 1.00). Larger collections
        were not measured.
        """
        if self.hnsw_ef_search is not None:
            return self.hnsw_ef_search
        return 256 if n_vectors < 250_000 else 1024

    def nlist_for(self, n_vectors: int) -> int:
        """IVF inverted lists for a quantizer trained on ``n_vectors`` vectors."""
        if self.ivf_nlist:
            return max(1, min(self.ivf_nlist, n_vectors))
        nearest = 2 ** round(math.log2(max(math.sqrt(max(n_vectors, 1)), 16.0)))
        return max(1, min(int(nearest), n_vectors))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPolicy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(
        hasattr(faiss, "StandardGpuResources") and get_num_gpus is not None and get_num_gpus() > 0
    )


_GPU_RESOURCES: Any = None
_GPU_LOCK = threading.Lock()


def _gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process (it reserves scratch GPU memory)."""
    global _GPU_RESOURCES
    with _GPU_LOCK:
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        return _GPU_RESOURCES


def _resolve_device(device: str) -> str:
    if device == "gpu" and not gpu_available():
        raise ConfigError(
            "IndexPolicy.device='gpu' but this FAISS build has no GPU support or sees no GPU; "
            "install the 'gpu' extra (faiss-gpu) on a GPU machine, or use device='auto'"
        )
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    return device


def _new_faiss_index(kind: str, dim: int, policy: IndexPolicy) -> Any:
    """A new, empty CPU FAISS index of ``kind`` with external int64 ids.

    An ``ivf_ip`` index needs data to train its quantizer: until its first vectors
    arrive it is an empty exact placeholder, then :func:`_trained_ivf` makes it.
    """
    if kind == "flat_ip":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw_ip":
        hnsw = faiss.IndexHNSWFlat(dim, policy.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = policy.hnsw_ef_construction
        hnsw.hnsw.efSearch = policy.ef_search_for(0)
        return faiss.IndexIDMap2(hnsw)
    if kind == "ivf_ip":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    raise ConfigError(f"unknown index kind {kind!r}; known kinds: {list(KINDS)}")


def _trained_ivf(dim: int, policy: IndexPolicy, vectors: np.ndarray, seed: int = 0) -> Any:
    """An empty ``ivf_ip`` index whose k-means quantizer is trained on a sample of ``vectors``.

    The lists are flat (exact inner products inside the scanned lists); a direct
    map keeps ``reconstruct`` working so the index can be restructured and saved.
    """
    n = len(vectors)
    if n == 0:
        raise InvalidInputError(
            "an IVF index is trained on the vectors it is built from: none given"
        )
    nlist = policy.nlist_for(n)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = policy.ivf_nprobe
    ivf.cp.max_points_per_centroid = policy.ivf_train_per_list
    ivf.cp.min_points_per_centroid = 1  # small collections: no under-training warning
    ivf.cp.seed = seed
    sample_size = min(n, nlist * policy.ivf_train_per_list)
    sample = vectors
    if sample_size < n:
        pick = np.random.default_rng(seed).choice(n, size=sample_size, replace=False)
        sample = vectors[np.sort(pick)]
    ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
    ivf.set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]
    return faiss.IndexIDMap2(ivf)


def _slug(text: str) -> str:
    """A folder name for an encoder version: readable, and unique by a hash suffix."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "encoder"
    if clean == text and len(text) <= 100:
        return text
    return f"{clean[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def generation_dir(index_root: str | Path, encoder_version: str) -> Path:
    """The folder of the index generation of ``encoder_version`` under ``index_root``."""
    if not encoder_version:
        raise ConfigError("encoder_version must be a non-empty string")
    return Path(index_root) / GENERATIONS_DIR / _slug(encoder_version)


def list_generations(index_root: str | Path) -> list[dict[str, Any]]:
    """The snapshots under ``index_root``: each sidecar plus its ``"directory"``, by encoder version."""
    base = Path(index_root) / GENERATIONS_DIR
    out = []
    if base.is_dir():
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            infos = VectorIndex.read_infos(folder)
            if infos is not None:
                out.append({**infos, "directory": str(folder)})
    return sorted(out, key=lambda i: str(i.get("encoder_version")))


def check_encoder_has_embeddings(store: Store, encoder_version: str) -> None:
    """Raise EncoderMismatchError when the store holds embeddings, but none of ``encoder_version``.

    What a service calls before serving: its encoder must match the indexed data.
    """
    if store.count_tracklets(encoder_version) > 0:
        return
    others = store.encoder_versions()
    if others:
        raise EncoderMismatchError(
            f"the store holds embeddings of encoder version(s) {others} but none of "
            f"{encoder_version!r}: serve with one of those encoders, or index the procedures "
            f"with this one (a new index generation)"
        )


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
    """Inner-product index over L2-normalised float32 vectors, keyed by tracklet id.

    Args:
        dim: embedding dimension ``D``.
        encoder_version: the encoder whose embeddings this index holds; vectors and
            queries of any other version are refused.
        kind: ``"flat_ip"`` (exact), ``"hnsw_ip"`` (approximate), or ``None`` to
            choose by size with ``policy`` (exact below its threshold, HNSW from it
            on, switching as the collection grows or shrinks).
        policy: thresholds, HNSW parameters and device.
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
        kind: str | None = "flat_ip",
        policy: IndexPolicy | None = None,
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
        max_row_id: int = 0,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        if not encoder_version:
            raise ConfigError("encoder_version must be a non-empty string")
        self.policy = policy or IndexPolicy()
        self._auto = kind is None
        self._kind = kind if kind is not None else self.policy.kind_for(0)
        self._index = _new_faiss_index(self._kind, dim, self.policy)
        self._device = _resolve_device(self.policy.device)
        self._gpu_index: Any = None
        self._dim = dim
        self._encoder_version = encoder_version
        self.preprocess = preprocess
        self.fragment = fragment
        self.directory: Path | None = None
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
    def auto_kind(self) -> bool:
        """Whether the kind follows the collection size (``kind=None`` at construction)."""
        return self._auto

    @property
    def device(self) -> str:
        """Where exact searches run: ``"cpu"`` or ``"gpu"``."""
        return self._device

    @property
    def max_id(self) -> int:
        """Highest row id this index has seen (0 when none): catch-up starts after it."""
        return self._max_row_id

    @property
    def supports_remove(self) -> bool:
        """Whether ids are removed in place; HNSW and IVF remove by rebuilding."""
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

    def check_encoder(self, encoder_version: str) -> None:
        """Raise EncoderMismatchError unless ``encoder_version`` is this index's."""
        if encoder_version != self._encoder_version:
            raise EncoderMismatchError(
                f"the index holds embeddings of encoder {self._encoder_version!r}, not "
                f"{encoder_version!r}: open the generation of this encoder "
                f"(VectorIndex.open_or_rebuild with its version) or serve with "
                f"encoder {self._encoder_version!r}"
            )

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All held ``(ids, vectors)`` (a CPU copy), in insertion order."""
        n = len(self)
        ids = self.ids().copy()
        vectors = (
            self._index.index.reconstruct_n(0, n) if n else np.zeros((0, self._dim), np.float32)
        )
        return ids, np.asarray(vectors, dtype=np.float32).reshape(n, self._dim)

    def _restructure(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the FAISS index by a new one of ``kind`` holding ``vectors`` (normalised)."""
        if kind == "ivf_ip" and len(ids):
            new = _trained_ivf(self._dim, self.policy, vectors)
        else:
            new = _new_faiss_index(kind, self._dim, self.policy)
        if len(ids):
            new.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self._index = new
        self._kind = kind
        self._gpu_index = None
        logger.info("index %s: now %s with %d vectors", self._encoder_version, kind, len(ids))

    def _maybe_switch_kind(self) -> None:
        if self._auto and self.policy.kind_for(len(self)) != self._kind:
            ids, vectors = self._vectors()
            self._restructure(self.policy.kind_for(len(ids)), ids, vectors)

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
            new_kind = self.policy.kind_for(len(self) + len(id_arr)) if self._auto else self._kind
            # a kind change, or an IVF index's first vectors (they train its quantizer)
            if new_kind != self._kind or (new_kind == "ivf_ip" and len(self) == 0):
                old_ids, old_vectors = self._vectors()
                self._restructure(
                    new_kind,
                    np.concatenate([old_ids, id_arr]),
                    np.concatenate([old_vectors, normalized]),
                )
            else:
                self._index.add_with_ids(normalized, id_arr)
                self._gpu_index = None
            self._max_row_id = max(self._max_row_id, int(id_arr.max()))

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed.

        ``flat_ip`` removes in place; ``hnsw_ip`` rebuilds its graph and ``ivf_ip``
        re-trains its quantizer from the vectors they keep (time grows with the
        collection: delete in batches).
        """
        id_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if id_arr.size == 0:
            return 0
        with self._lock:
            if self.supports_remove:
                removed = int(self._index.remove_ids(faiss.IDSelectorBatch(id_arr)))
                self._gpu_index = None
                if removed:
                    self._maybe_switch_kind()
                return removed
            held, vectors = self._vectors()
            keep = ~np.isin(held, id_arr)
            removed = int((~keep).sum())
            if removed:
                kind = self.policy.kind_for(int(keep.sum())) if self._auto else self._kind
                self._restructure(kind, held[keep], vectors[keep])
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
            params: Any = None
            if self._kind == "hnsw_ip":
                params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                params.efSearch = max(self.policy.ef_search_for(n), kk)
            elif self._kind == "ivf_ip" and n and self._is_trained_ivf():
                params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
                params.nprobe = self.policy.ivf_nprobe
            if exclude_ids:
                excluded = np.fromiter((int(i) for i in exclude_ids), dtype=np.int64)
                inner = faiss.IDSelectorBatch(excluded)
                selector = faiss.IDSelectorNot(inner)
                params = params or faiss.SearchParameters()
                params.sel = selector
                scores, labels = self._index.search(q, kk, params=params)
                del params, selector, inner  # the selectors must outlive the search
            elif params is not None:
                scores, labels = self._index.search(q, kk, params=params)
            elif self._device == "gpu":
                scores, labels = self._gpu_copy().search(q, kk)
            else:
                scores, labels = self._index.search(q, kk)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(labels, scores, strict=True)
        ]

    def _is_trained_ivf(self) -> bool:
        """Whether the FAISS index is a trained IVF (not the empty placeholder)."""
        return isinstance(faiss.downcast_index(self._index.index), faiss.IndexIVF)

    def nlist(self) -> int | None:
        """The IVF index's number of inverted lists (``None`` for other kinds)."""
        inner = faiss.downcast_index(self._index.index)
        return int(inner.nlist) if isinstance(inner, faiss.IndexIVF) else None

    def _gpu_copy(self) -> Any:
        """A GPU copy of the exact index for searching (rebuilt after each change)."""
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
        return self._gpu_index

    # -- persistence ---------------------------------------------------------------

    def infos(self) -> dict[str, Any]:
        """The sidecar content describing this index."""
        return {
            "format_version": SIDECAR_FORMAT_VERSION,
            "kind": self._kind,
            "auto_kind": self._auto,
            "policy": self.policy.to_dict(),
            "metric": "inner_product",
            "normalized": True,
            "encoder_version": self._encoder_version,
            "dim": self._dim,
            "count": len(self),
            "nlist": self.nlist(),
            "max_row_id": self._max_row_id,
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "fragment": self.fragment.to_dict() if self.fragment else None,
            "created_at": datetime.now(UTC).isoformat(),
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``index.faiss`` then ``index_infos.json`` atomically into ``directory``.

        Each file goes to a temp file in the same folder, is fsynced and renamed
        over the old one. A crash between the two leaves a sidecar whose count
        does not match the index; :meth:`load` refuses that pair and
        :meth:`open_or_rebuild` rebuilds from the store.

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
        with self._lock:
            data = faiss.serialize_index(self._index)  # the CPU master copy
            infos = self.infos()
        index_path = out / INDEX_FILE
        _write_atomic(index_path, np.ascontiguousarray(data))
        _write_atomic(
            out / SIDECAR_FILE, (json.dumps(infos, indent=2, sort_keys=True) + "\n").encode()
        )
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
            policy = policy or IndexPolicy.from_dict(infos.get("policy") or {})
            preprocess = (
                PreprocessConfig.from_dict(infos["preprocess"]) if infos.get("preprocess") else None
            )
            fragment = (
                FragmentConfig.from_dict(infos["fragment"]) if infos.get("fragment") else None
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexNotReadyError(f"{folder / SIDECAR_FILE}: malformed sidecar: {exc}") from exc
        if encoder_version is not None and stored_version != encoder_version:
            raise EncoderMismatchError(
                f"the index in {folder} holds embeddings of encoder {stored_version!r}, not "
                f"{encoder_version!r}; open {generation_dir(folder.parent.parent, encoder_version)}"
            )
        try:
            raw = faiss.deserialize_index(np.fromfile(index_path, dtype=np.uint8))
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexNotReadyError(f"cannot read FAISS index {index_path}: {exc}") from exc
        if raw.d != dim or raw.ntotal != count:
            raise IndexNotReadyError(
                f"{index_path} ({raw.ntotal} vectors of dim {raw.d}) does not match its sidecar "
                f"({count} vectors of dim {dim}); an interrupted save? rebuild it from the store"
            )
        if kind not in KINDS or not isinstance(raw, faiss.IndexIDMap2):
            raise IndexNotReadyError(
                f"{index_path}: unexpected FAISS index {type(raw).__name__} of kind {kind!r}"
            )
        index = cls(
            dim,
            stored_version,
            kind=None if auto else kind,
            policy=policy,
            preprocess=preprocess,
            fragment=fragment,
        )
        index._index = raw
        index._kind = kind
        if kind == "hnsw_ip":
            faiss.downcast_index(raw.index).hnsw.efSearch = policy.ef_search_for(count)  # type: ignore[attr-defined]
        ids = index.ids()
        index._max_row_id = max(max_row_id, int(ids.max()) if ids.size else 0)
        index.directory = folder
        return index

    @classmethod
    def open_or_rebuild(
        cls,
        index_root: str | Path,
        store: Store,
        encoder_version: str,
        dim: int,
        *,
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
        save: bool = False,
        policy: IndexPolicy | None = None,
    ) -> VectorIndex:
        """The index generation of ``encoder_version``, equal to the store's ids of that version.

        Loads the snapshot in ``generation_dir(index_root, encoder_version)`` if it
        is readable and of the same dim (else starts empty, its kind chosen by size),
        then :meth:`sync_with_store` (the catch-up after a crash or another writer).

        Args:
            index_root: the index folder (may not exist yet); generations live under it.
            store: the source of truth.
            encoder_version: the encoder whose embeddings the index must hold.
            dim: their dimension.
            preprocess: recorded in the sidecar (taken from the snapshot if not given).
            fragment: recorded in the sidecar (taken from the snapshot if not given).
            save: write the snapshot back when syncing changed the index.
            policy: kind threshold / HNSW parameters / device (default: the snapshot's,
                else :class:`IndexPolicy` defaults).
        """
        folder = generation_dir(index_root, encoder_version)
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
                index = cls.load(folder, encoder_version, policy=policy)
            except IndexNotReadyError as exc:
                logger.warning("%s: rebuilding from the store", exc)
        if index is None:
            index = cls.build_from_store(
                store, encoder_version, dim, policy=policy, preprocess=preprocess, fragment=fragment
            )
            index.directory = folder
            if save:
                index.save(folder)
            return index
        index.preprocess = preprocess or index.preprocess
        index.fragment = fragment or index.fragment
        added, removed = index.sync_with_store(store)
        if save and (added or removed):
            index.save(folder)
        return index

    @classmethod
    def build_from_store(
        cls,
        store: Store,
        encoder_version: str,
        dim: int | None = None,
        *,
        policy: IndexPolicy | None = None,
        preprocess: PreprocessConfig | None = None,
        fragment: FragmentConfig | None = None,
    ) -> VectorIndex:
        """A new index of every stored embedding of ``encoder_version`` (kind chosen by size).

        Args:
            dim: expected dimension; default the stored one (an empty store needs it).

        Raises:
            EncoderMismatchError: stored embeddings of another dim than ``dim``.
            IndexNotReadyError: no ``dim`` and nothing stored to take it from.
        """
        policy = policy or IndexPolicy()
        ids_parts: list[np.ndarray] = []
        vec_parts: list[np.ndarray] = []
        for ids, vectors in store.iter_embeddings(encoder_version, batch=_SYNC_BATCH):
            if dim is None:
                dim = int(vectors.shape[1])
            if vectors.shape[1] != dim:
                raise EncoderMismatchError(
                    f"the store holds embeddings of encoder {encoder_version!r} with dim "
                    f"{vectors.shape[1]}, but the index has dim {dim}"
                )
            ids_parts.append(ids)
            vec_parts.append(_l2_normalize(vectors, "stored embeddings"))
        if dim is None:
            raise IndexNotReadyError(
                f"the store holds no embeddings of encoder {encoder_version!r}: "
                f"nothing to build an index from"
            )
        index = cls(
            dim, encoder_version, kind=None, policy=policy, preprocess=preprocess, fragment=fragment
        )
        if ids_parts:
            all_ids = np.concatenate(ids_parts)
            with index._lock:
                index._restructure(
                    policy.kind_for(len(all_ids)), all_ids, np.concatenate(vec_parts)
                )
                index._max_row_id = int(all_ids.max())
        return index

    def sync_with_store(self, store: Store) -> tuple[int, int]:
        """Make the index hold exactly the store's ids of this encoder version.

        Catches up with rows after :attr:`max_id`, removes ids the store no longer
        has (deleted or replaced procedures), and adds any stored id the index
        lacks (rows committed out of id order). An HNSW index with rows to remove
        is rebuilt from the store instead.

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
            gone = np.setdiff1d(held, stored, assume_unique=True) if held.size else held
            removed = 0
            if gone.size and not self.supports_remove:
                fresh_index = self.build_from_store(
                    store, self._encoder_version, self._dim, policy=self.policy
                )
                before = set(held.tolist())
                after = set(fresh_index.ids().tolist())
                self._index, self._kind = fresh_index._index, fresh_index._kind
                self._gpu_index = None
                self._max_row_id = max(self._max_row_id, fresh_index._max_row_id)
                removed, added = len(before - after), added + len(after - before)
                held = self.ids()
            elif gone.size:
                removed = self.remove(gone)
                held = self.ids()
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


def rebuild_generation(
    index_root: str | Path,
    store: Store,
    encoder_version: str,
    *,
    dim: int | None = None,
    policy: IndexPolicy | None = None,
    preprocess: PreprocessConfig | None = None,
    fragment: FragmentConfig | None = None,
) -> VectorIndex:
    """Rebuild the generation of ``encoder_version`` from the store and save it atomically.

    What ``polypindex index rebuild`` runs; the crop/fragment settings are kept
    from the old snapshot when not given.
    """
    folder = generation_dir(index_root, encoder_version)
    old = VectorIndex.read_infos(folder) or {}
    if preprocess is None and old.get("preprocess"):
        preprocess = PreprocessConfig.from_dict(old["preprocess"])
    if fragment is None and old.get("fragment"):
        fragment = FragmentConfig.from_dict(old["fragment"])
    if policy is None and old.get("policy"):
        policy = IndexPolicy.from_dict(old["policy"])
    index = VectorIndex.build_from_store(
        store, encoder_version, dim, policy=policy, preprocess=preprocess, fragment=fragment
    )
    index.save(folder)
    return index


def describe_generations(index_root: str | Path, store: Store) -> list[dict[str, Any]]:
    """Every encoder version found in the store or on disk, with its state.

    Returns:
        One dict per encoder version: ``encoder_version``, ``stored`` (tracklets in
        the store), ``snapshot`` (vectors in the saved index, ``None`` if none),
        ``kind``, ``max_row_id``, ``directory`` and ``in_sync`` (the snapshot holds
        as many vectors as the store and covers its highest id; a snapshot that is
        behind is caught up when opened).
    """
    on_disk = {str(i.get("encoder_version")): i for i in list_generations(index_root)}
    out = []
    for version in sorted(set(store.encoder_versions()) | set(on_disk)):
        infos = on_disk.get(version)
        stored = store.count_tracklets(version)
        ids = store.tracklet_ids(version) if stored else np.zeros(0, dtype=np.int64)
        snapshot = int(infos["count"]) if infos else None
        out.append(
            {
                "encoder_version": version,
                "stored": stored,
                "snapshot": snapshot,
                "kind": infos.get("kind") if infos else None,
                "max_row_id": infos.get("max_row_id") if infos else None,
                "directory": str(generation_dir(index_root, version)),
                "in_sync": bool(
                    infos
                    and snapshot == stored
                    and int(infos.get("max_row_id") or 0) >= (int(ids[-1]) if ids.size else 0)
                ),
            }
        )
    return out
