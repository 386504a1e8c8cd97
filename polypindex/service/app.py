"""The FastAPI application: ``create_app(settings)``.

Nothing is loaded at import time. The lifespan loads the ONNX encoder, opens the
store and the vector index (catching up from the store) and puts them, as one
:class:`~service.resources.Resources`, on ``app.state.resources`` (beside the app's
``settings``, ``auth`` and ``embedding_slots``; :class:`~service.resources.ServiceState`).
If one cannot be loaded the app still starts: ``GET /healthz`` says "degraded" and
why, and the endpoints that need it answer 503 ``not_ready``. While serving, a
background thread keeps the index equal to the store (``service/upkeep.py``; jobs
hand it what they commit).

When the encoder and the store loaded and ``settings.run_jobs``, a
:class:`~indexer.jobs.JobRunner` runs indexing jobs (``POST /procedures``) in a
background thread: at start-up the jobs a dead process left ``running`` are
queued again; at shutdown it stops after the current job.

An encoder placed on ``app.state.encoder`` (that is, ``app.state.resources.encoder``)
before start-up is used instead of loading ``settings.model_path`` (tests, other runtimes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from polypindex.service import ui
from polypindex.service.admission import AdmissionMiddleware, bound_worker_pool
from polypindex.service.auth import decide_auth_mode, require_scope
from polypindex.service.errors import AUTH_ERRORS, install_error_handlers
from polypindex.service.limits import AuthFirstMiddleware, BodyLimitMiddleware, install_openapi
from polypindex.service.metrics import install_metrics
from polypindex.service.observability import REQUEST_ID_HEADER, RequestMiddleware
from polypindex.service.resources import (
    Resources,
    ServiceState,
    load_resources,
    start_job_runner,
)
from polypindex.service.routers import exchange, health, jobs, polyps, predict, reid, search
from polypindex.service.routers import read as read_routes
from polypindex.service.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Colonoscopy polyp re-identification over indexed tracklets.

- `POST /search`: the nearest indexed tracklets of a query tracklet (by id, frames or embedding).
- `POST /reid`: whether two tracklets show the same polyp.
- `POST /procedures`: index a COCO folder, a video or a frame folder (inputs inside the data
  roots) as a background job; `GET /jobs/{job_id}` and `GET /jobs` report progress and errors.
- `DELETE /procedures/{uid}`: remove a procedure's tracklets and their vectors.
- `GET /procedures/{uid}/polyps`: the procedure's polyp entities (its tracklets grouped).
- `GET /healthz`: what is loaded; when degraded, what is missing and how to build it.
- `GET /livez` (always 200) and `GET /readyz` (503 until model, store and index are ready):
  the orchestrators' probes.
- `GET /` (the viewer page) and what it reads: `GET /procedures`, `GET /procedures/{uid}`,
  `GET /tracklets/{id}` (+ `/thumbnail`, `/strip` JPEGs), `GET /index/map`.

Every error has the body `{"error": {"code": "...", "message": "..."}}`.

Access: every endpoint but `/healthz`, `/livez`, `/readyz` and `/metrics` needs an API key with a scope (`read`:
search, re-ID, predictions and reads; `write`: indexing jobs and deletes; `admin`: all),
sent as `Authorization: Bearer <token>` (401 `unauthorized`, 403 `forbidden`), unless the
service runs open (`/healthz` says which).
"""


def _version() -> str:
    try:
        return package_version("polypindex")
    except PackageNotFoundError:
        return "0.0.0"


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id, unless it names one: its endpoint's name (``search``,
    ``get_tracklet``, ``list_jobs``), so generated clients have those function names."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model, store and index load when it starts (``lifespan``).

    Args:
        settings: the service settings; default: read from ``POLYPINDEX_*`` environment variables.
    """
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bound_worker_pool(settings.worker_threads)  # not anyio's 40 threads (admission.py)
        injected = app.state.resources.encoder
        resources = await run_in_threadpool(load_resources, settings, injected)
        try:
            auth = await run_in_threadpool(decide_auth_mode, settings, resources.store)
        except BaseException:
            await run_in_threadpool(resources.close)
            raise  # AuthConfigError: reachable from other machines without any key
        (logger.warning if auth.mode == "open" else logger.info)("access: %s", auth.reason)
        app.state.auth = auth
        await run_in_threadpool(start_job_runner, resources, settings)
        app.state.resources = resources
        if resources.problems:
            logger.warning("starting degraded: %s", "; ".join(resources.problems.values()))
        try:
            yield
        finally:
            await run_in_threadpool(resources.close)  # waits for the current job to stop
            key_store = getattr(app.state, "key_store", None)  # opened by an auth re-check
            if key_store is not None:
                key_store.close()

    app = FastAPI(
        title="PolypIndex",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    not_started = "the service has not started yet"
    app.state = ServiceState(
        {
            "settings": settings,
            "embedding_slots": threading.BoundedSemaphore(settings.max_concurrent_embeddings),
            "resources": Resources(problems={"startup": not_started}, jobs_problem=not_started),
            "auth": None,  # decided at start-up (service/auth.py)
        }
    )
    install_error_handlers(app)
    # Access (docs/deploy.md#keys-and-scopes): one scope per router; /healthz, /metrics,
    # the API docs and the viewer's static page are open (service.auth.OPEN_PATHS).
    read: dict[str, Any] = {
        "dependencies": [Depends(require_scope("read"))],
        "responses": AUTH_ERRORS,
    }
    write: dict[str, Any] = {
        "dependencies": [Depends(require_scope("write"))],
        "responses": AUTH_ERRORS,
    }
    app.include_router(health.router)
    app.include_router(search.router, **read)
    app.include_router(reid.router, **read)
    app.include_router(predict.router, **read)
    app.include_router(polyps.router, **read)  # before read_routes' /procedures/{uid:path}
    app.include_router(jobs.router, **write)  # POST/DELETE /procedures, GET /jobs*
    app.include_router(read_routes.router, **read)  # the viewer's reads (docs/viewer.md)
    app.include_router(exchange.router, **read)  # GET /export (docs/inputs.md)
    app.include_router(ui.router)  # the viewer page at GET / (static, no data)
    install_metrics(app)  # GET /metrics and the request metrics middleware
    if settings.cors_origins:  # off unless an allowlist is configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Location"],
        )
    # The body limit counts bytes as they arrive (service/limits.py); inside the request
    # middleware, so a 413 is logged and audited like any answer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthFirstMiddleware)  # the key before the body (outside the limit)
    install_openapi(app, settings)  # the settings' and the model's limits in the schema
    # Above capacity: 503 overloaded + Retry-After, before any work (service/admission.py).
    app.add_middleware(
        AdmissionMiddleware,
        capacity=settings.worker_threads,
        max_queued=settings.max_queued_requests,
    )
    app.add_middleware(RequestMiddleware)  # outermost: request id, request log, audit
    return app
