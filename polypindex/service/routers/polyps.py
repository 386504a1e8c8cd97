"""``GET /procedures/{uid}/polyps``: a procedure's polyp entities (docs/grouping.md).

Registered before the viewer's ``GET /procedures/{uid}`` (whose ``{uid:path}`` would
otherwise take ``…/polyps`` as part of the UID).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from polypindex.service.deps import StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.read import polyps_of_procedure
from polypindex.service.read_schemas import ProcedurePolypsResponse
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import MAX_UID_LENGTH, NO_CONTROL_CHARS

router = documented_router("polyps")


@router.get(
    "/procedures/{uid:path}/polyps",
    operation_id="get_procedure_polyps",
    summary="A procedure's polyps (its tracklets grouped into entities)",
    responses=error_responses(404, 422, 500, 503),
)
def procedure_polyps(
    store: StoreDep,
    uid: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MAX_UID_LENGTH,
            pattern=NO_CONTROL_CHARS,
            description="The procedure UID.",
        ),
    ],
    encoder_version: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="This generation (default: newest)."),
    ] = None,
) -> ProcedurePolypsResponse:
    """The polyp entities of a procedure: each with its tracklets, their time spans, a
    representative thumbnail (a tracklet id) and the size and histology predictions
    aggregated over its tracklets. Entities are computed when the procedure is indexed
    (and by `polypindex index group`); tracklets two at a time on screen with different
    boxes are never one entity. 404 `procedure_not_found` for an unknown UID.
    """
    return polyps_of_procedure(store, uid, encoder_version)
