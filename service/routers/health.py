"""``GET /healthz``: what is loaded, and what is missing and how to build it."""

from __future__ import annotations

from fastapi import Request

from polypindex.service import resources
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import HealthResponse

router = documented_router("health")


@router.get("/healthz", summary="Service health")
def healthz(request: Request) -> HealthResponse:
    """Always HTTP 200: `status` is "ok", or "degraded" with `reasons` naming what is missing
    (model, database, index) and the command that builds it.
    """
    state = request.app.state
    encoder: resources.Encoder | None = getattr(state, "encoder", None)
    store: resources.Store | None = getattr(state, "store", None)
    index: resources.VectorIndex | None = getattr(state, "index", None)
    refresher: resources.IndexRefresher | None = getattr(state, "index_refresher", None)
    if refresher is not None:
        refresher.maybe_refresh()
    reasons = list((getattr(state, "problems", None) or {}).values())
    store_ok = store is not None and resources.store_ok(store)
    if store is not None and not store_ok:
        reasons.append("the database does not answer; see the server log")
    if index is not None and encoder is not None:
        empty = resources.empty_index_problem(index, encoder)
        if empty:
            reasons.append(empty)
    return HealthResponse(
        status="degraded" if reasons else "ok",
        encoder_version=encoder.version if encoder is not None else None,
        embedding_dim=encoder.dim if encoder is not None else None,
        index_size=resources.index_size(index) if index is not None else None,
        store_ok=store_ok,
        reasons=reasons,
        probes={
            task: probe.version for task, probe in (getattr(state, "probes", None) or {}).items()
        },
        missing_probes=dict(getattr(state, "probe_problems", None) or {}),
    )
