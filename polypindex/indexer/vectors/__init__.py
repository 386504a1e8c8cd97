"""The vector index: :class:`VectorIndex` on pluggable backends (docs/store.md).

- :mod:`.policy`: :class:`IndexPolicy`, which kind a collection of a given size uses;
- :mod:`.base`: the :class:`VectorBackend` protocol every backend satisfies;
- :mod:`.exact`, :mod:`.hnsw`, :mod:`.ivf`: the FAISS backends (on :mod:`.faiss_base`);
- :mod:`.registry`: kind name → backend class (:data:`BACKENDS`), the one place to
  add a backend;
- :mod:`.gpu`: exact searches on a GPU copy;
- :mod:`.index`: :class:`VectorIndex` (its state and compaction in :mod:`.core`, its
  search helpers and score guard in :mod:`.query`, its lock in :mod:`.rwlock`);
- :mod:`.snapshot`: the snapshot files and their checksum.

Generation folders and the store sync are :mod:`polypindex.indexer.generations`.
"""

from polypindex.indexer.vectors.base import BackendClass, VectorBackend
from polypindex.indexer.vectors.gpu import gpu_available
from polypindex.indexer.vectors.index import VectorIndex
from polypindex.indexer.vectors.policy import EXACT, HNSW, IVF, IndexPolicy
from polypindex.indexer.vectors.query import IndexCorruptError
from polypindex.indexer.vectors.registry import BACKENDS, backend_class
from polypindex.indexer.vectors.snapshot import (
    INDEX_FILE,
    SIDECAR_FILE,
    SnapshotError,
    verify_snapshot,
)

__all__ = [
    "BACKENDS",
    "EXACT",
    "HNSW",
    "INDEX_FILE",
    "IVF",
    "SIDECAR_FILE",
    "BackendClass",
    "IndexCorruptError",
    "IndexPolicy",
    "SnapshotError",
    "VectorBackend",
    "VectorIndex",
    "backend_class",
    "gpu_available",
    "verify_snapshot",
]
