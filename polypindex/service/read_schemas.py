"""Response bodies of the read endpoints: the viewer's (``service/routers/read.py``) and a
procedure's polyp entities (``service/routers/polyps.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from polypindex.service.schemas import Prediction


class ProcedureItem(BaseModel):
    """One indexed procedure (one row per UID and encoder version)."""

    uid: str
    dataset_id: str | None
    encoder_version: str
    n_tracklets: int
    indexed_at: datetime = Field(description="When this generation of it was indexed (UTC).")


class ProcedureList(BaseModel):
    """One page of procedures, ordered by UID then encoder version."""

    total: int = Field(description="Procedures matching the filters, all pages together.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null on the last.")
    procedures: list[ProcedureItem]


class TimelineTracklet(BaseModel):
    """A tracklet as a bar on its procedure's timeline."""

    tracklet_id: int
    key: str
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None = Field(
        description="Ground-truth identity when the indexed data was annotated, else null."
    )
    thumbnail_url: str | None = Field(description="Its thumbnail; null when none was written.")
    predictions: dict[str, Prediction]
    entity_id: int | None = Field(
        default=None,
        description="Its polyp entity within the procedure (`GET /procedures/{uid}/polyps`); "
        "null when the procedure has not been grouped.",
    )


class ProcedureDetail(BaseModel):
    """A procedure and its tracklets by start frame (frame ranges for a timeline)."""

    procedure: ProcedureItem
    first_frame: int | None = Field(description="The smallest start frame (null: no tracklets).")
    last_frame: int | None = Field(description="The largest end frame (null: no tracklets).")
    tracklets: list[TimelineTracklet]


class BoxSummary(BaseModel):
    """The tracklet's boxes as stored at indexing time (``[x, y, w, h]`` pixels)."""

    first: list[float] | None = None
    last: list[float] | None = None
    mean: list[float] | None = None
    frame_ids: list[int] = Field(default_factory=list, description="Every frame of the tracklet.")
    sampled_frame_ids: list[int] = Field(
        default_factory=list, description="The frames the encoder embedded."
    )


class TrackletDetail(BaseModel):
    """One indexed tracklet: where it is, its boxes, its labels and predictions."""

    tracklet_id: int
    procedure_uid: str
    dataset_id: str | None
    key: str
    encoder_version: str
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None
    size_mm: float | None = Field(description="Annotated size when the input carried one.")
    histology: str | None = Field(description="Annotated histology when the input carried one.")
    boxes: BoxSummary
    predictions: dict[str, Prediction]
    thumbnail_url: str | None
    strip_url: str


class MapPoint(BaseModel):
    """One sampled index vector on the 2-D map."""

    tracklet_id: int
    x: float
    y: float
    procedure_uid: str
    predictions: dict[str, str] = Field(description="Predicted label per task (size, histology).")
    entity_id: int | None = Field(
        default=None, description="Its polyp entity within its procedure; null when not grouped."
    )


class IndexMapResponse(BaseModel):
    """2-D coordinates (each axis scaled to [-1, 1]) of a sample of the served encoder
    version's vectors."""

    encoder_version: str
    method: str = Field(description='"pca" or "umap" (the method actually used).')
    methods: list[str] = Field(description="The methods this install offers.")
    total: int = Field(description="Vectors of this encoder version in the store.")
    sampled: int = Field(description="Points returned (at most `limit`, evenly spread by id).")
    points: list[MapPoint]


_MEAN_PROBABILITY = (
    "Frame-weighted mean of the tracklets' calibrated probability of the positive class "
    "(diminutive, adenoma)."
)


class EntityPrediction(BaseModel):
    """One task's prediction aggregated over an entity's tracklets."""

    label: str = Field(description="The label of most of its tracklets (ties: more frames).")
    probability: float = Field(description=_MEAN_PROBABILITY)
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


def boxes_summary(boxes: dict[str, Any]) -> BoxSummary:
    """The stored boxes dict as its response model (unknown keys dropped)."""
    return BoxSummary(**{k: v for k, v in boxes.items() if k in BoxSummary.model_fields})
