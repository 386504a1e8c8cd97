"""The IVF backend (``ivf_ip``): inverted file of flat lists, inner product.

Its k-means coarse quantizer is trained on the vectors it is built from: until its
first vectors arrive it is an empty exact placeholder, and removing ids re-trains
it from the vectors kept. The lists are flat (exact inner products inside the
scanned lists); a direct map keeps ``reconstruct`` working so the index can be
restructured and saved. ``nprobe`` is read from the policy at every search.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polypindex.indexer.vectors.faiss_base import FaissBackend, faiss_module
from polypindex.indexer.vectors.policy import IndexPolicy
from polypindex.model.core.errors import InvalidInputError

faiss = faiss_module()


class IvfBackend(FaissBackend):
    """FAISS ``IndexIVFFlat`` with ``nlist`` from the policy (by size when automatic)."""

    needs_training = True

    def _new_inner(self) -> Any:
        return faiss.IndexFlatIP(self.dim)  # the placeholder until the first vectors

    def _ivf(self) -> Any:
        """The inner IVF index, or ``None`` while this is the untrained placeholder."""
        inner = faiss.downcast_index(self._index.index)
        return inner if isinstance(inner, faiss.IndexIVF) else None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self._ivf() is None:
            self._index = _trained(self.dim, self.policy, vectors)
        super().add(ids, vectors)

    def _search_parameters(self, k: int) -> Any:
        if self._ivf() is None:
            return None
        params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
        params.nprobe = self.policy.ivf_nprobe
        return params

    def describe(self) -> dict[str, Any]:
        ivf = self._ivf()
        return {**super().describe(), "nlist": int(ivf.nlist) if ivf is not None else None}


def _trained(dim: int, policy: IndexPolicy, vectors: np.ndarray, seed: int = 0) -> Any:
    """An empty ``IndexIDMap2`` over an IVF whose quantizer is trained on a sample of ``vectors``."""
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
