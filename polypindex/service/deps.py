"""FastAPI dependencies: the settings and the objects the lifespan put on ``app.state``.

Every dependency here is ``async``: it only reads ``app.state``, so it runs on the
event loop and costs no thread-pool hop (an endpoint then makes at most one).
``IndexDep`` never syncs the index (the upkeep thread does, :mod:`service.upkeep`).
``EncoderDep``, ``StoreDep`` and ``IndexDep`` answer 503 ``not_ready`` (with what
is missing and how to build it) when that object could not be loaded; tests can
replace them with ``app.dependency_overrides[get_encoder] = ...``. ``QueryEmbedderDep``
bundles what embedding a request's tracklet needs (settings, slots, encoder and,
when loaded, the store), in that order.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request

from polypindex.indexer.jobs import JobRunner
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import IndexNotReadyError
from polypindex.model.scoring.probe import Probe
from polypindex.service.backend import QueryEmbedder
from polypindex.service.resources import Encoder
from polypindex.service.settings import Settings
from polypindex.service.upkeep import IndexUpkeep


def _problem(request: Request, key: str, default: str) -> str:
    problems: dict[str, str] = getattr(request.app.state, "problems", {}) or {}
    return problems.get(key, default)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_encoder(request: Request) -> Encoder:
    encoder: Encoder | None = getattr(request.app.state, "encoder", None)
    if encoder is None:
        raise IndexNotReadyError(_problem(request, "model", "the encoder model is not loaded"))
    return encoder


async def get_store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise IndexNotReadyError(_problem(request, "store", "the database is not loaded"))
    return store


def get_upkeep(request: Request) -> IndexUpkeep | None:
    upkeep: IndexUpkeep | None = getattr(request.app.state, "index_upkeep", None)
    return upkeep


async def get_index(request: Request) -> VectorIndex:
    """The loaded index as it is now (never synced here); 503 while it is rebuilt."""
    upkeep = get_upkeep(request)
    if upkeep is not None:
        index = upkeep.serving()
        if index is None:
            state, problem = upkeep.status()
            raise IndexNotReadyError(problem or f"the vector index is {state}")
        return index
    loaded: VectorIndex | None = getattr(request.app.state, "index", None)
    if loaded is None:
        raise IndexNotReadyError(_problem(request, "index", "the vector index is not loaded"))
    return loaded


async def get_optional_upkeep(request: Request) -> IndexUpkeep | None:
    """The index upkeep (``None`` when no index is loaded: a delete still works on the store)."""
    return get_upkeep(request)


async def get_embedding_slots(request: Request) -> threading.Semaphore:
    """The semaphore bounding concurrent frame decoding + embedding
    (``settings.max_concurrent_embeddings``)."""
    slots: threading.Semaphore = request.app.state.embedding_slots
    return slots


async def get_jobs(request: Request) -> JobRunner:
    """The indexing job runner; 503 ``not_ready`` saying why when it is not running."""
    jobs: JobRunner | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        reason = getattr(request.app.state, "jobs_problem", None) or "indexing jobs are not running"
        raise IndexNotReadyError(reason)
    return jobs


async def get_index_if_loaded(request: Request) -> VectorIndex | None:
    """The loaded index, or ``None`` (a delete still works on the store and snapshots)."""
    index: VectorIndex | None = getattr(request.app.state, "index", None)
    return index


class Probes:
    """The installed probes (task → probe) and, for each task without one, why."""

    def __init__(self, installed: dict[str, Probe], problems: dict[str, str]) -> None:
        self.installed = installed
        self.problems = problems


async def get_probes(request: Request) -> Probes:
    return Probes(
        getattr(request.app.state, "probes", None) or {},
        getattr(request.app.state, "probe_problems", None) or {},
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
ProbesDep = Annotated[Probes, Depends(get_probes)]
EmbeddingSlotsDep = Annotated[threading.Semaphore, Depends(get_embedding_slots)]
EncoderDep = Annotated[Encoder, Depends(get_encoder)]
StoreDep = Annotated[Store, Depends(get_store)]
IndexDep = Annotated[VectorIndex, Depends(get_index)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
OptionalIndexDep = Annotated[VectorIndex | None, Depends(get_index_if_loaded)]
OptionalUpkeepDep = Annotated[IndexUpkeep | None, Depends(get_optional_upkeep)]


async def get_store_if_loaded(request: Request) -> Store | None:
    """The store, or ``None`` (for endpoints that need it only for some inputs)."""
    store: Store | None = getattr(request.app.state, "store", None)
    return store


OptionalStoreDep = Annotated[Store | None, Depends(get_store_if_loaded)]


async def get_query_embedder(
    settings: SettingsDep,
    slots: EmbeddingSlotsDep,
    encoder: EncoderDep,
    store: OptionalStoreDep,  # needed only for inputs given by id
) -> QueryEmbedder:
    """What embeds a request's tracklets; 503 ``not_ready`` when the encoder is not loaded."""
    return QueryEmbedder(encoder, store, settings, slots)


QueryEmbedderDep = Annotated[QueryEmbedder, Depends(get_query_embedder)]
