"""The HNSW backend (``hnsw_ip``): an approximate graph index, inner product.

``efSearch`` is read from the policy at every search (by collection size, at least
``k``); removing ids rebuilds the graph from the vectors kept.
"""

from __future__ import annotations

from typing import Any, Self

from polypindex.indexer.vectors.faiss_base import FaissBackend, faiss_module
from polypindex.indexer.vectors.policy import IndexPolicy

faiss = faiss_module()


class HnswBackend(FaissBackend):
    """FAISS ``IndexHNSWFlat`` (``M``, ``efConstruction`` from the policy)."""

    def _new_inner(self) -> Any:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.policy.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.policy.hnsw_ef_construction
        hnsw.hnsw.efSearch = self.policy.ef_search_for(0)
        return hnsw

    def _search_parameters(self, k: int) -> Any:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.policy.ef_search_for(len(self)), k)
        return params

    @classmethod
    def load(cls, data: bytes, policy: IndexPolicy) -> Self:
        backend = super().load(data, policy)
        inner = faiss.downcast_index(backend.faiss_index.index)
        inner.hnsw.efSearch = policy.ef_search_for(len(backend))  # type: ignore[attr-defined]
        return backend
