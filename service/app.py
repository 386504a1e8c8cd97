"""The FastAPI application: ``create_app(settings)``.

Nothing is loaded at import time. The lifespan loads the ONNX encoder, opens the
store and the vector index (catching up from the store) and puts them on
``app.state`` (``settings``, ``encoder``, ``store``, ``index``, ``index_refresher``,
``problems``, ``jobs``; ``embedding_slots`` is made with the app). If one cannot be loaded
the app still starts: ``GET /healthz`` says "degraded" and why, and the endpoints
that need it answer 503 ``not_ready``. While serving, the index catches up with
procedures indexed or deleted in the store (every ``index_refresh_seconds``).

When the encoder and the store loaded and ``settings.run_jobs``, a
:class:`~indexer.jobs.JobRunner` runs indexing jobs (``POST /procedures``) in a
background thread: at start-up the jobs a dead process left ``running`` are
queued again; at shutdown it stops after the current job.

An encoder placed on ``app.state.encoder`` before start-up is used instead of
loading ``settings.model_path`` (tests, other runtimes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from polypindex.service.errors import install_error_handlers
from polypindex.service.resources import load_resources, start_job_runner
from polypindex.service.routers import health, jobs, predict, reid, search
from polypindex.service.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Colonoscopy polyp re-identification over indexed tracklets.

- `POST /search`: the nearest indexed tracklets of a query tracklet (by id, frames or embedding).
- `POST /reid`: whether two tracklets show the same polyp.
- `POST /procedures`: index a COCO folder, a video or a frame folder (inputs inside the data
  roots) as a background job; `GET /jobs/{job_id}` and `GET /jobs` report progress and errors.
- `DELETE /procedures/{uid}`: remove a procedure's tracklets and their vectors.
- `GET /healthz`: what is loaded; when degraded, what is missing and how to build it.

Every error has the body `{"error": {"code": "...", "message": "..."}}`.
"""


def _version() -> str:
    try:
        return package_version("polypindex")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model, store and index load when it starts (``lifespan``).

    Args:
        settings: the service settings; default: read from ``POLYPINDEX_*`` environment variables.
    """
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        injected = getattr(app.state, "encoder", None)
        resources = await run_in_threadpool(load_resources, settings, injected)
        await run_in_threadpool(start_job_runner, resources, settings)
        app.state.encoder = resources.encoder
        app.state.store = resources.store
        app.state.index = resources.index
        app.state.index_refresher = resources.refresher
        app.state.problems = resources.problems
        app.state.jobs = resources.jobs
        app.state.jobs_problem = resources.jobs_problem
        app.state.probes = resources.probes
        app.state.probe_problems = resources.probe_problems
        if resources.problems:
            logger.warning("starting degraded: %s", "; ".join(resources.problems.values()))
        try:
            yield
        finally:
            app.state.jobs = None
            await run_in_threadpool(resources.close)  # waits for the current job to stop
            app.state.store = None
            app.state.index = None
            app.state.index_refresher = None

    app = FastAPI(
        title="PolypIndex",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.embedding_slots = threading.BoundedSemaphore(settings.max_concurrent_embeddings)
    app.state.encoder = None
    app.state.store = None
    app.state.index = None
    app.state.index_refresher = None
    app.state.jobs = None
    app.state.jobs_problem = "the service has not started yet"
    app.state.probes = {}
    app.state.probe_problems = {}
    app.state.problems = {"startup": "the service has not started yet"}
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(reid.router)
    app.include_router(predict.router)
    app.include_router(jobs.router)
    return app
