"""``GET /healthz``: what is loaded, and what is missing and how to build it."""

from __future__ import annotations

from fastapi import Request

from polypindex.indexer.faults import public_message
from polypindex.service import resources
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
    encoder: resources.Encoder | None = getattr(state, "encoder", None)
    store: resources.Store | None = getattr(state, "store", None)
    index: resources.VectorIndex | None = getattr(state, "index", None)
    upkeep: resources.IndexUpkeep | None = getattr(state, "index_upkeep", None)
    reasons = list((getattr(state, "problems", None) or {}).values())
    index_state: str | None = None
    if upkeep is not None:  # read its state; never sync here
        index = upkeep.index
        index_state, index_problem = upkeep.status()
        if index_problem:
            reasons.append(index_problem)
    auth = getattr(state, "auth", None)  # service.auth.AuthState, set at start-up
    store_ok = store is not None and resources.store_ok(store)
    if store is not None and not store_ok:
        reasons.append("the database does not answer; see the server log")
    if index is not None and encoder is not None and index_state in (None, "ready"):
        empty = resources.empty_index_problem(index, encoder)
        if empty:
            reasons.append(empty)
    roots = getattr(getattr(state, "settings", None), "data_roots", None) or ()
    # no server path, SQL or parameter in the body (indexer.faults.public_message)
    reasons = [public_message(r, roots) for r in reasons]
    return HealthResponse(
        status="degraded" if reasons else "ok",
        encoder_version=encoder.version if encoder is not None else None,
        embedding_dim=encoder.dim if encoder is not None else None,
        encoder_runtime=(
            encoder.describe() if encoder is not None and hasattr(encoder, "describe") else None
        ),
        index_size=resources.index_size(index) if index is not None else None,
        index_state=index_state,
        store_ok=store_ok,
        reasons=reasons,
        probes={
            task: probe.version for task, probe in (getattr(state, "probes", None) or {}).items()
        },
        missing_probes=dict(getattr(state, "probe_problems", None) or {}),
        auth=auth.mode if auth is not None else None,
        auth_reason=auth.reason if auth is not None else None,
    )
