"""indexer: turns procedures into tracklet embeddings in the SQL store and the FAISS index.

The store (:mod:`indexer.store`) is the source of truth; the vector index
(:mod:`indexer.vectors`, one generation per encoder: :mod:`indexer.generations`) is
derived from it and rebuildable; the pipeline (:mod:`indexer.pipeline`) writes both,
from the inputs of :mod:`indexer.sources`; :mod:`indexer.jobs` runs it in the
background with its state in the database.
Imports only the ``model`` runtime, never torch. See ``docs/store.md``.
"""

from polypindex.indexer.embed import Embedder
from polypindex.indexer.generations import generation_dir, rebuild_generation
from polypindex.indexer.jobs import JobRecord, JobRunner
from polypindex.indexer.pipeline import delete_procedure, index_dataset, index_sources
from polypindex.indexer.progress import IndexReport, Progress
from polypindex.indexer.sources import (
    ProcedureSource,
    coco_sources,
    frames_source,
    procedure_uid,
    video_source,
)
from polypindex.indexer.store import Store
from polypindex.indexer.tables import ProcedureRecord, TrackletRecord, TrackletRow
from polypindex.indexer.vectors import IndexPolicy, VectorIndex

__all__ = [
    "Embedder",
    "IndexPolicy",
    "IndexReport",
    "JobRecord",
    "JobRunner",
    "ProcedureRecord",
    "ProcedureSource",
    "Progress",
    "Store",
    "TrackletRecord",
    "TrackletRow",
    "VectorIndex",
    "coco_sources",
    "delete_procedure",
    "frames_source",
    "generation_dir",
    "index_dataset",
    "index_sources",
    "procedure_uid",
    "rebuild_generation",
    "video_source",
]
