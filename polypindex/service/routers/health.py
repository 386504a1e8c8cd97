"""``GET /healthz`` (what is loaded, and what is missing and how to build it), and the
orchestrators' probes: ``GET /livez`` (the process answers) and ``GET /readyz`` (the
model, the store and the index are ready: :data:`service.resources.READINESS_CHECKS`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from polypindex.service.deps import resources_of
from polypindex.service.resources import health, readiness
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import HealthResponse, LivenessResponse, ReadinessResponse

router = documented_router("health")


@router.get("/healthz", summary="Service health", operation_id="healthz")
def healthz(request: Request) -> HealthResponse:
    """Always HTTP 200: `status` is "ok", or "degraded" with `reasons` naming what is missing
    (model, database, index) and the command that builds it; `index_state` is "rebuilding"
    while an index found corrupt (or without a usable snapshot) is rebuilt from the store.
    It reads what is loaded and asks the database one `SELECT 1`; it never syncs the index.
    For an orchestrator's probes use `/livez` and `/readyz`.
    """
    state = request.app.state
    return health(resources_of(request), state.settings, state.auth)


@router.get("/livez", summary="Liveness probe", operation_id="livez")
async def livez() -> LivenessResponse:
    """Always HTTP 200 while the process serves requests: it checks nothing else, so an
    orchestrator restarts the process only when it no longer answers (docs/deploy.md)."""
    return LivenessResponse()


@router.get(
    "/readyz",
    summary="Readiness probe",
    operation_id="readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Not ready: `missing` says why."}},
)
def readyz(request: Request) -> JSONResponse:
    """HTTP 200 when the encoder model is loaded, the database answers and the vector index
    is loaded and searchable (an empty index is ready: jobs fill it); else 503 with
    `missing` naming each thing that is not ready. It asks the database one `SELECT 1`.
    The container's health check and a Kubernetes readiness probe use it (docs/deploy.md).
    """
    missing = readiness(resources_of(request), request.app.state.settings)
    body = ReadinessResponse(ready=not missing, missing=missing)
    return JSONResponse(body.model_dump(), status_code=503 if missing else 200)
