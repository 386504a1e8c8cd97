"""What the FAISS backends share: an ``IndexIDMap2`` over an inner-product index.

The id map gives the store's tracklet ids as FAISS ids and keeps ``reconstruct``
working, so an index can be restructured (another kind, a rebuild after removals)
from what it holds. Subclasses say how their empty inner index is made and which
search parameters it takes.
"""

from __future__ import annotations

import os
from typing import Any, Self

import numpy as np

try:
    import faiss
except ImportError as exc:  # pragma: no cover - every supported install has one of the two
    raise ImportError(
        "FAISS is not installed: install PolypIndex with the 'cpu' extra (faiss-cpu) or the "
        "'gpu' extra (faiss-gpu-cu12), e.g. `make venv EXTRAS=cpu,postgres`"
    ) from exc

from polypindex.indexer.vectors.policy import IndexPolicy
from polypindex.model.core.errors import IndexNotReadyError

_CORES = os.cpu_count() or 1


def faiss_module() -> Any:
    """The ``faiss`` module, imported once here with the install hint when it is missing
    (the index kinds take it from here rather than importing it bare)."""
    return faiss


def set_search_threads(n_queries: int) -> None:
    """OpenMP threads for the next FAISS call of this thread: one for a single query
    (a team of threads would busy-wait after every search for nothing to do), up to
    the cores for a batch."""
    faiss.omp_set_num_threads(max(1, min(n_queries, _CORES)))


class FaissBackend:
    """A :class:`~polypindex.indexer.vectors.base.VectorBackend` on a FAISS ``IndexIDMap2``.

    Args:
        dim: vector dimension.
        policy: the index policy (search parameters are read from it at search time).
        index: an ``IndexIDMap2`` to wrap (a loaded file); default a new empty one.
    """

    supports_remove = False
    needs_training = False
    gpu_search = False
    """Whether searches without exclusions may run on a GPU copy (exact search only)."""

    def __init__(self, dim: int, policy: IndexPolicy, index: Any = None) -> None:
        self.dim = dim
        self.policy = policy
        self._index: Any = index if index is not None else faiss.IndexIDMap2(self._new_inner())

    def _new_inner(self) -> Any:
        """The empty inner FAISS index (inner-product metric)."""
        raise NotImplementedError

    def _search_parameters(self, k: int) -> Any:
        """Per-search FAISS parameters of this kind (``None``: the index's own)."""
        return None

    @classmethod
    def build(cls, dim: int, policy: IndexPolicy, ids: np.ndarray, vectors: np.ndarray) -> Self:
        backend = cls(dim, policy)
        if len(ids):
            backend.add(ids, vectors)
        return backend

    @property
    def faiss_index(self) -> Any:
        """The CPU FAISS index (the master copy that is saved and copied to a GPU)."""
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        ids = self.ids().copy()
        vectors = (
            self._index.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
        )
        return ids, np.asarray(vectors, dtype=np.float32).reshape(n, self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: np.ndarray) -> int:
        """Rebuild from the vectors kept (FAISS graphs and trained lists do not shrink well)."""
        held, vectors = self.vectors()
        keep = ~np.isin(held, ids)
        removed = int((~keep).sum())
        if removed:
            self._index = self.build(self.dim, self.policy, held[keep], vectors[keep])._index
        return removed

    def vectors_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors at insertion positions ``[start, stop)`` (a chunk of :meth:`vectors`)."""
        stop = min(stop, len(self))
        n = max(stop - start, 0)
        ids = self.ids()[start:stop].copy()
        vectors = (
            self._index.index.reconstruct_n(start, n) if n else np.zeros((0, self.dim), np.float32)
        )
        return ids, np.asarray(vectors, dtype=np.float32).reshape(n, self.dim)

    def vectors_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of those ``ids`` that are held: ``(ids (n,), vectors (n, D))``."""
        found, rows = [], []
        for i in np.asarray(ids, dtype=np.int64).tolist():
            try:
                rows.append(self._index.reconstruct(i))
            except RuntimeError:  # not held
                continue
            found.append(i)
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.asarray(found, np.int64), np.asarray(rows, dtype=np.float32)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: np.ndarray | None = None,
        *,
        allow_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k``; ``exclude_ids`` and ``allow_ids`` become one FAISS id selector."""
        set_search_threads(len(queries))
        params = self._search_parameters(k)
        keep: list[Any] = []  # the selectors must outlive the search
        selector: Any = None
        if exclude_ids is not None and len(exclude_ids):
            inner = faiss.IDSelectorBatch(np.asarray(exclude_ids, dtype=np.int64))
            selector = faiss.IDSelectorNot(inner)
            keep += [inner, selector]
        if allow_ids is not None:
            allowed = faiss.IDSelectorBatch(np.asarray(allow_ids, dtype=np.int64))
            keep.append(allowed)
            selector = allowed if selector is None else faiss.IDSelectorAnd(allowed, selector)
            keep.append(selector)
        if selector is not None:
            params = params or faiss.SearchParameters()
            params.sel = selector
        if params is not None:
            scores, labels = self._index.search(queries, k, params=params)
        else:
            scores, labels = self._index.search(queries, k)
        del params, keep
        return scores, labels

    def serialise(self) -> memoryview:
        return faiss.serialize_index(self._index).data

    @classmethod
    def load(cls, data: bytes, policy: IndexPolicy) -> Self:
        try:
            raw = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, ValueError) as exc:
            raise IndexNotReadyError(f"cannot read FAISS index: {exc}") from exc
        if not isinstance(raw, faiss.IndexIDMap2):
            raise IndexNotReadyError(f"unexpected FAISS index {type(raw).__name__}")
        return cls(int(raw.d), policy, raw)

    def describe(self) -> dict[str, Any]:
        return {
            "metric": "inner_product",
            "dim": self.dim,
            "count": len(self),
            "nlist": None,
            "faiss_version": faiss.__version__,
        }
