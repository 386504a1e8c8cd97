"""The exact backend (``flat_ip``): every vector scanned, inner product."""

from __future__ import annotations

from typing import Any

import numpy as np

from polypindex.indexer.vectors.faiss_base import FaissBackend, faiss_module

faiss = faiss_module()


class ExactBackend(FaissBackend):
    """Brute-force inner product; removes in place and may search on a GPU copy."""

    supports_remove = True
    gpu_search = True

    def _new_inner(self) -> Any:
        return faiss.IndexFlatIP(self.dim)

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
