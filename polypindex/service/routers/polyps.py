"""``GET /procedures/{uid}/polyps``: a procedure's polyp entities (docs/grouping.md).

Registered before the viewer's ``GET /procedures/{uid}`` (whose ``{uid:path}`` would
otherwise take ``…/polyps`` as part of the UID).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, Field

from polypindex.indexer import grouping
from polypindex.service.deps import StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.routers.documented import documented_router

router = documented_router("polyps")


class EntityPrediction(BaseModel):
    """One task's prediction aggregated over an entity's tracklets."""

    label: str = Field(description="The label of most of its tracklets (ties: more frames).")
    probability: float = Field(
        description="Frame-weighted mean of the tracklets' calibrated probability of the "
        "positive class (diminutive, adenoma)."
    )
    n_tracklets: int = Field(description="Tracklets with a prediction for this task.")
    probe_versions: list[str]


class PolypEntity(BaseModel):
    """One polyp: the tracklets grouped as showing it."""

    entity_id: int = Field(description="0, 1, … within the procedure, by first frame.")
    tracklet_ids: list[int]
    start_frame: int
    end_frame: int
    spans: list[list[int]] = Field(
        description="[start_frame, end_frame] of each tracklet, in the order of tracklet_ids."
    )
    n_frames: int
    thumbnail_tracklet_id: int | None = Field(
        description="The tracklet whose thumbnail represents the entity "
        "(GET /tracklets/{id}/thumbnail); null when none has a thumbnail."
    )
    predictions: dict[str, EntityPrediction] = Field(
        default_factory=dict, description="Size / histology by task; empty without probes."
    )


class ProcedurePolypsResponse(BaseModel):
    """The procedure's polyp entities."""

    uid: str
    encoder_version: str
    grouped: bool = Field(
        description="False when the procedure has not been grouped yet "
        "(`polypindex index group`): no entities, every tracklet in ungrouped_tracklet_ids."
    )
    n_polyps: int = Field(description="Number of entities.")
    method: str | None = Field(description="The grouping method.")
    cut: float | None = Field(description="The grouping's probability cut.")
    calibrated: bool | None = Field(
        description="Whether the grouping used the model's calibrated probability."
    )
    entities: list[PolypEntity]
    ungrouped_tracklet_ids: list[int]


def _entity(e: grouping.Entity) -> dict[str, Any]:
    return {**e.__dict__}


@router.get(
    "/procedures/{uid:path}/polyps",
    summary="A procedure's polyps (its tracklets grouped into entities)",
    responses=error_responses(404, 422, 500, 503),
)
def procedure_polyps(
    store: StoreDep,
    uid: Annotated[str, Path(min_length=1, max_length=255, description="The procedure UID.")],
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
    found = grouping.procedure_polyps(store, uid, encoder_version)
    return ProcedurePolypsResponse(
        uid=found.uid,
        encoder_version=found.encoder_version,
        grouped=found.grouped,
        n_polyps=len(found.entities),
        method=found.method,
        cut=found.cut,
        calibrated=found.calibrated,
        entities=[PolypEntity(**_entity(e)) for e in found.entities],
        ungrouped_tracklet_ids=found.ungrouped_tracklet_ids,
    )
