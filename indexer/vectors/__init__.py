"""The vector index: :class:`VectorIndex` on pluggable backends (docs/store.md).

- :mod:`.policy`: :class:`IndexPolicy`, which kind a collection of a given size uses;
- :mod:`.base`: the :class:`VectorBackend` protocol every backend satisfies;
- :mod:`.exact`, :mod:`.hnsw`, :mod:`.ivf`: the FAISS backends (on :mod:`.faiss_base`);
- :mod:`.registry`: kind name → backend class (:data:`BACKENDS`), the one place to
  add a backend;
- :mod:`.gpu`: exact searches on a GPU copy;
- :mod:`.index`: :class:`VectorIndex` and its snapshot files.

Generation folders and the store sync are :mod:`polypindex.indexer.generations`.
"""

from polypindex.indexer.vectors.base import BackendClass, VectorBackend
from polypindex.indexer.vectors.gpu import gpu_available
from polypindex.indexer.vectors.index import INDEX_FILE, SIDECAR_FILE, VectorIndex
from polypindex.indexer.vectors.policy import EXACT, HNSW, IVF, IndexPolicy
from polypindex.indexer.vectors.registry import BACKENDS, backend_class

__all__ = [
    "BACKENDS",
    "EXACT",
    "HNSW",
    "INDEX_FILE",
    "IVF",
    "SIDECAR_FILE",
    "BackendClass",
    "IndexPolicy",
    "VectorBackend",
    "VectorIndex",
    "backend_class",
    "gpu_available",
]
