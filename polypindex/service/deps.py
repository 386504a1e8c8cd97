"""FastAPI dependencies: the settings and the fields of the one
:class:`~service.resources.Resources` the lifespan put on ``app.state.resources``.

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
from polypindex.service.backend import QueryEmbedder
from polypindex.service.resources import Encoder, Probes, Resources
from polypindex.service.settings import Settings
from polypindex.service.upkeep import IndexUpkeep


def resources_of(request: Request) -> Resources:
    """What the service loaded (the lifespan's :class:`Resources`; before start-up, none)."""
    resources: Resources = request.app.state.resources
    return resources


def _problem(res: Resources, key: str, default: str) -> str:
    return res.problems.get(key, default)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_encoder(request: Request) -> Encoder:
    res = resources_of(request)
    if res.encoder is None:
        raise IndexNotReadyError(_problem(res, "model", "the encoder model is not loaded"))
    return res.encoder


async def get_encoder_if_loaded(request: Request) -> Encoder | None:
    """The encoder, or ``None`` (for endpoints that need only its version, as a default)."""
    return resources_of(request).encoder


async def get_store(request: Request) -> Store:
    res = resources_of(request)
    if res.store is None:
        raise IndexNotReadyError(_problem(res, "store", "the database is not loaded"))
    return res.store


async def get_index(request: Request) -> VectorIndex:
    """The loaded index as it is now (never synced here); 503 while it is rebuilt."""
    res = resources_of(request)
    if res.upkeep is not None:
        index = res.upkeep.serving()
        if index is None:
            state, problem = res.upkeep.status()
            raise IndexNotReadyError(problem or f"the vector index is {state}")
        return index
    if res.index is None:
        raise IndexNotReadyError(_problem(res, "index", "the vector index is not loaded"))
    return res.index


async def get_optional_upkeep(request: Request) -> IndexUpkeep | None:
    """The index upkeep (``None`` when no index is loaded: a delete still works on the store)."""
    return resources_of(request).upkeep


async def get_embedding_slots(request: Request) -> threading.Semaphore:
    """The semaphore bounding concurrent frame decoding + embedding
    (``settings.max_concurrent_embeddings``)."""
    slots: threading.Semaphore = request.app.state.embedding_slots
    return slots


async def get_jobs(request: Request) -> JobRunner:
    """The indexing job runner; 503 ``not_ready`` saying why when it is not running."""
    res = resources_of(request)
    if res.jobs is None:
        raise IndexNotReadyError(res.jobs_problem or "indexing jobs are not running")
    return res.jobs


async def get_probes(request: Request) -> Probes:
    res = resources_of(request)
    return Probes(res.probes, res.probe_problems)


async def get_store_if_loaded(request: Request) -> Store | None:
    """The store, or ``None`` (for endpoints that need it only for some inputs)."""
    return resources_of(request).store


SettingsDep = Annotated[Settings, Depends(get_settings)]
ProbesDep = Annotated[Probes, Depends(get_probes)]
EmbeddingSlotsDep = Annotated[threading.Semaphore, Depends(get_embedding_slots)]
EncoderDep = Annotated[Encoder, Depends(get_encoder)]
OptionalEncoderDep = Annotated[Encoder | None, Depends(get_encoder_if_loaded)]
StoreDep = Annotated[Store, Depends(get_store)]
IndexDep = Annotated[VectorIndex, Depends(get_index)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
OptionalUpkeepDep = Annotated[IndexUpkeep | None, Depends(get_optional_upkeep)]
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
