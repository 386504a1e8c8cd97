"""indexer: turns procedures into tracklet embeddings in the SQL store and the FAISS index.

The store (:mod:`indexer.store`) is the source of truth; the vector index
(:mod:`indexer.vector_index`) is derived from it and rebuildable; the pipeline
(:mod:`indexer.pipeline`) writes both. Imports only the ``model`` runtime, never torch.
"""

from indexer.pipeline import Embedder, IndexReport, delete_procedure, index_dataset, procedure_uid
from indexer.store import ProcedureRecord, Store, TrackletRecord, TrackletRow
from indexer.vector_index import VectorIndex

__all__ = [
    "Embedder",
    "IndexReport",
    "ProcedureRecord",
    "Store",
    "TrackletRecord",
    "TrackletRow",
    "VectorIndex",
    "delete_procedure",
    "index_dataset",
    "procedure_uid",
]
