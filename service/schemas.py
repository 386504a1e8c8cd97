"""The API's request and response bodies (pydantic v2), apart from the ORM rows.

Limits that depend on the settings or the loaded model (``k <= max_k``, frames
per request, embedding size) are checked at request time by the routers and
answered exactly like these schema checks (422 ``validation_error``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

QUERY_KINDS = ("tracklet_id", "frames", "embedding")
SizeLabel = Literal["diminutive", "non_diminutive"]
HistologyLabel = Literal["adenoma", "non_adenoma"]
Task = Literal["size", "histology"]
ALL_TASKS: tuple[Task, ...] = ("size", "histology")

# A 1×1 PNG, so the examples can be sent as they are.
_EXAMPLE_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


class FrameInput(BaseModel):
    """One frame of a query tracklet: an encoded image and the polyp's box in it."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str = Field(
        min_length=1,
        description="The frame as base64 JPEG or PNG (a `data:image/...;base64,` prefix is accepted).",
    )
    bbox: list[float] = Field(
        min_length=4,
        max_length=4,
        description="The polyp's box `[x, y, w, h]` in pixels; finite, `w > 0`, `h > 0`.",
        examples=[[40.0, 32.0, 24.0, 20.0]],
    )

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, bbox: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"bbox must be 4 finite numbers [x, y, w, h], got {bbox}")
        if not (bbox[2] > 0 and bbox[3] > 0):
            raise ValueError(f"bbox [x, y, w, h] needs w > 0 and h > 0, got {bbox}")
        return bbox


class TrackletInput(BaseModel):
    """A tracklet, given in exactly one of three ways.

    - ``tracklet_id``: an indexed tracklet (its stored embedding is used);
    - ``frames``: images + boxes, embedded now with the service's encoder;
    - ``embedding``: a vector made by the same encoder version (size = the model's dim).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"tracklet_id": 42},
                {"frames": [{"image_b64": _EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
                {"embedding": [0.12, -0.05, 0.31]},
            ]
        },
    )

    tracklet_id: int | None = Field(default=None, ge=0, description="An indexed tracklet's id.")
    frames: list[FrameInput] | None = Field(
        default=None,
        min_length=1,
        description="The tracklet's frames in order (at most the service's "
        "`max_frames_per_request`, 256 by default).",
    )
    embedding: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=65536,
        description="An embedding of the service's encoder version; its size must equal the "
        "model's embedding dim (see `GET /healthz`). Normalised here.",
    )

    @field_validator("embedding")
    @classmethod
    def _check_embedding(cls, embedding: list[float] | None) -> list[float] | None:
        if embedding is not None:
            if not all(math.isfinite(v) for v in embedding):
                raise ValueError("embedding contains NaN or infinite values")
            if not any(embedding):
                raise ValueError("embedding is all zeros and cannot be normalised")
        return embedding

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Self:
        given = [name for name in QUERY_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise ValueError(
                f"give exactly one of {', '.join(QUERY_KINDS)} for a tracklet; got {got}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in QUERY_KINDS if getattr(self, name) is not None)


class SearchRequest(BaseModel):
    """``POST /search``: the nearest indexed tracklets of a query tracklet."""

    model_config = ConfigDict(extra="forbid")

    query: TrackletInput
    k: int = Field(
        default=10,
        ge=1,
        description="Results wanted (at most the service's `max_k`, 100 by default).",
    )
    exclude_same_procedure: bool = Field(
        default=False,
        description="For a query by `tracklet_id`: leave out every tracklet of its procedure.",
    )
    procedure_uids: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Only return tracklets of these procedures (all of them when omitted).",
    )
    exclude_tracklet_ids: list[int] = Field(
        default_factory=list, max_length=100_000, description="Tracklet ids never returned."
    )
    predicted_size: SizeLabel | None = Field(
        default=None,
        description="Only tracklets whose stored size prediction is this label (needs the "
        "size probe; tracklets indexed before it was installed have no prediction until "
        "`polypindex index predict`).",
    )
    predicted_histology: HistologyLabel | None = Field(
        default=None,
        description="Only tracklets whose stored histology prediction is this label (needs the "
        "histology probe).",
    )


class Prediction(BaseModel):
    """A probe's prediction for one tracklet."""

    label: str = Field(description="The predicted class.")
    probability: float = Field(
        description="Calibrated probability of the positive class (diminutive for size, "
        "adenoma for histology), in [0, 1]."
    )
    probe_version: str = Field(description="The probe that made the prediction.")


class SearchHit(BaseModel):
    """One indexed tracklet found by a search."""

    tracklet_id: int
    score: float = Field(description="Cosine similarity to the query, in [-1, 1].")
    procedure_uid: str
    key: str = Field(description="The tracklet's key within its procedure.")
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None = Field(
        description="Ground-truth identity when the indexed data was annotated, else null."
    )
    predictions: dict[str, Prediction] = Field(
        default_factory=dict,
        description="The stored size / histology predictions (by task); empty when no probe "
        "had predicted this tracklet.",
    )


class SearchResponse(BaseModel):
    """Results by decreasing score."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder_version": "hmve-demo-3f2a9c1b",
                    "results": [
                        {
                            "tracklet_id": 57,
                            "score": 0.913,
                            "procedure_uid": "synth/test/seq_003",
                            "key": "seq_003/polyp_2/0",
                            "start_frame": 120,
                            "end_frame": 171,
                            "n_frames": 52,
                            "identity_label": "seq_003/polyp_2",
                            "predictions": {
                                "size": {
                                    "label": "diminutive",
                                    "probability": 0.81,
                                    "probe_version": "probe-size-1a2b3c4d5e6f",
                                }
                            },
                        }
                    ],
                }
            ]
        }
    )

    encoder_version: str
    results: list[SearchHit]


class ReidRequest(BaseModel):
    """``POST /reid``: are two tracklets the same polyp?"""

    model_config = ConfigDict(extra="forbid")

    a: TrackletInput
    b: TrackletInput


class ReidResponse(BaseModel):
    """The two tracklets' similarity and the model's same-polyp decision."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "similarity": 0.82,
                    "probability": 0.694,
                    "same_polyp": True,
                    "threshold": 0.66,
                    "encoder_version": "hmve-demo-3f2a9c1b",
                }
            ]
        }
    )

    similarity: float = Field(description="Cosine similarity of the two embeddings.")
    probability: float = Field(description="sigmoid(similarity).")
    same_polyp: bool = Field(description="probability >= threshold.")
    threshold: float = Field(description="The model's re-identification threshold.")
    encoder_version: str


class PredictRequest(BaseModel):
    """``POST /predict``: size and histology of one tracklet."""

    model_config = ConfigDict(extra="forbid")

    tracklet: TrackletInput
    tasks: list[Task] = Field(
        default_factory=lambda: list(ALL_TASKS),
        min_length=1,
        description="Which predictions to make; each needs its probe installed.",
    )


class PredictResponse(BaseModel):
    """The probes' predictions for the tracklet, with the model versions that made them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder_version": "hmve-resnet18-c319bfa56514",
                    "tracklet_id": 42,
                    "predictions": {
                        "size": {
                            "label": "diminutive",
                            "probability": 0.81,
                            "probe_version": "probe-size-1a2b3c4d5e6f",
                        },
                        "histology": {
                            "label": "adenoma",
                            "probability": 0.66,
                            "probe_version": "probe-histology-0f9e8d7c6b5a",
                        },
                    },
                }
            ]
        }
    )

    encoder_version: str
    tracklet_id: int | None = Field(description="The indexed tracklet, for a query by id.")
    predictions: dict[str, Prediction]


class HealthResponse(BaseModel):
    """What is loaded; ``degraded`` lists what is missing and how to build it."""

    status: str = Field(description='"ok", or "degraded" when something is missing.')
    encoder_version: str | None
    embedding_dim: int | None
    index_size: int | None = Field(description="Vectors in the loaded index (null if not loaded).")
    store_ok: bool = Field(description="Whether the database answers.")
    reasons: list[str] = Field(description="What is missing and how to build it; empty when ok.")
    probes: dict[str, str] = Field(
        default_factory=dict, description="Installed probes: task → probe version."
    )
    missing_probes: dict[str, str] = Field(
        default_factory=dict,
        description="Tasks without a probe (their predictions are not served) and how to "
        "train one; optional, so not a reason for `degraded`.",
    )


SEARCH_EXAMPLES: dict[str, dict[str, Any]] = {
    "by_id": {
        "summary": "Query by an indexed tracklet, other procedures only",
        "value": {"query": {"tracklet_id": 42}, "k": 5, "exclude_same_procedure": True},
    },
    "by_frames": {
        "summary": "Query by frames (base64 images + boxes)",
        "value": {
            "query": {"frames": [{"image_b64": _EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
            "k": 10,
        },
    },
    "by_embedding": {
        "summary": "Query by an embedding, in two procedures",
        "value": {
            "query": {"embedding": [0.12, -0.05, 0.31]},
            "k": 10,
            "procedure_uids": ["synth/test/seq_003", "synth/test/seq_004"],
            "exclude_tracklet_ids": [7],
        },
    },
    "diminutive_only": {
        "summary": "Only tracklets predicted diminutive, other procedures only",
        "value": {
            "query": {"tracklet_id": 42},
            "k": 5,
            "exclude_same_procedure": True,
            "predicted_size": "diminutive",
        },
    },
}

PREDICT_EXAMPLES: dict[str, dict[str, Any]] = {
    "by_id": {
        "summary": "An indexed tracklet, both predictions",
        "value": {"tracklet": {"tracklet_id": 42}},
    },
    "frames_size_only": {
        "summary": "New frames, size only",
        "value": {
            "tracklet": {"frames": [{"image_b64": _EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
            "tasks": ["size"],
        },
    },
}

REID_EXAMPLES: dict[str, dict[str, Any]] = {
    "two_ids": {
        "summary": "Two indexed tracklets",
        "value": {"a": {"tracklet_id": 42}, "b": {"tracklet_id": 57}},
    },
    "frames_vs_id": {
        "summary": "New frames against an indexed tracklet",
        "value": {
            "a": {"frames": [{"image_b64": _EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
            "b": {"tracklet_id": 57},
        },
    },
}


class IndexRequest(BaseModel):
    """``POST /procedures``: an indexing job. ``kind`` plus that kind's fields.

    - ``coco``: ``root`` (dataset folder), optional ``split`` (default "test"),
      ``force``, ``min_tracklet_length`` (default 30);
    - ``video``: ``video``, ``detections`` (MOT-style CSV), optional ``uid``,
      ``first_frame``, ``min_score``, ``force``, ``min_tracklet_length``;
    - ``frames``: ``folder``, ``detections``, optional ``uid``, ``min_score``,
      ``force``, ``min_tracklet_length``.

    Every path must lie inside the service's data roots (else 403 ``path_not_allowed``).
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"kind": "coco", "root": "/data/coco/new", "split": "test"},
                {"kind": "video", "video": "/data/v/p1.mp4", "detections": "/data/v/p1.csv"},
            ]
        },
    )

    kind: str = Field(description='"coco", "video" or "frames".')

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class JobResponse(BaseModel):
    """An indexing job as stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "6f1c0d2a9b7e4d0f8a3c5e2b1d4f6a80",
                    "kind": "coco",
                    "status": "running",
                    "params": {"root": "/data/coco/new", "split": "test"},
                    "progress": {"procedures_done": 3, "procedures_total": 10},
                    "error": None,
                    "created_at": "2026-11-23T09:00:00+00:00",
                    "updated_at": "2026-11-23T09:00:05+00:00",
                    "started_at": "2026-11-23T09:00:01+00:00",
                    "finished_at": None,
                }
            ]
        }
    )

    job_id: str
    kind: str
    status: str = Field(description='"queued", "running", "succeeded" or "failed".')
    params: dict[str, Any] = Field(description="The request, its paths resolved.")
    progress: dict[str, Any] = Field(
        description="Procedures and tracklets done, tracklets/s, ETA; when succeeded also "
        "`report` (what was indexed)."
    )
    error: str | None = Field(description="Why the job failed (exception class and message).")
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None


class JobListResponse(BaseModel):
    """Jobs, oldest first."""

    jobs: list[JobResponse]


class DeleteProcedureResponse(BaseModel):
    """What ``DELETE /procedures/{uid}`` removed."""

    procedure_uid: str
    tracklets_removed: int = Field(description="Tracklets deleted (rows and index vectors).")
