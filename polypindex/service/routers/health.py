"""``GET /healthz``: what is loaded, and what is missing and how to build it."""

from __future__ import annotations

from fastapi import Request

from polypindex.service.deps import resources_of
from polypindex.service.resources import health
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import HealthResponse

router = documented_router("health")


@router.get("/healthz", summary="Service health")
def healthz(request: Request) -> HealthResponse:
    """Always HTTP 200: `status` is "ok", or "degraded" with `reasons` naming what is missing
    (model, database, index) and the command that builds it; `index_state` is "rebuilding"
    while an index found corrupt (or without a usable snapshot) is rebuilt from the store.
    It reads what is loaded and asks the database one `SELECT 1`; it never syncs the index.
    """
    state = request.app.state
    return health(resources_of(request), state.settings, state.auth)
