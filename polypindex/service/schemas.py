"""The API's shared request parts and the bodies of ``/reid``, ``/predict`` and
``/healthz`` (pydantic v2); those of ``/search`` are in :mod:`service.search_schemas`,
the viewer's reads in :mod:`service.read_schemas`, indexing jobs in
:mod:`service.job_schemas`.

Every id is a positive 64-bit integer, every list has a ``max_length`` and every
string sent to the database or the file system refuses control characters (a NUL
byte is a 422 here, not a database error). Limits that depend on the settings or
the loaded model (``k <= max_k``, frames per request, the base64 length of a frame,
the embedding size) are checked at request time and answered exactly like these
schema checks (422 ``validation_error``); :func:`service.limits.install_openapi`
writes them into the published schema, so it is exactly as strict as the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from polypindex.indexer.tables import PredictionRow

QUERY_KINDS = ("tracklet_id", "frames", "embedding")
SizeLabel = Literal["diminutive", "non_diminutive"]
HistologyLabel = Literal["adenoma", "non_adenoma"]
Task = Literal["size", "histology"]
ALL_TASKS: tuple[Task, ...] = ("size", "histology")


def predicted_labels(
    size: SizeLabel | None, histology: HistologyLabel | None
) -> tuple[tuple[Task, str], ...]:
    """The ``(task, label)`` filters of a request's ``predicted_size`` and
    ``predicted_histology`` (those given, in that order)."""
    given: tuple[tuple[Task, str | None], ...] = (("size", size), ("histology", histology))
    return tuple((task, label) for task, label in given if label is not None)


# Ids are positive 64-bit integers (SQLite INTEGER, PostgreSQL bigint).
MAX_ID = 2**63 - 1
TrackletId = Annotated[int, Field(ge=1, le=MAX_ID)]
# No control characters (NUL included): refused before they reach SQL or a path.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
MAX_UID_LENGTH = 255  # the store's column: indexer.input_checks.MAX_UID_LENGTH (a test)
MAX_PATH_LENGTH = 4096
ProcedureUid = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_UID_LENGTH, pattern=NO_CONTROL_CHARS)
]
InputPath = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_PATH_LENGTH, pattern=NO_CONTROL_CHARS)
]
# Caps on the request lists that the settings do not bound.
MAX_PROCEDURE_UIDS = 1000
MAX_EXCLUDED_IDS = 10_000
# Box coordinates, pixels: far beyond any image the pixel limit lets through.
MAX_COORDINATE = 1_000_000.0
# What ``image_b64`` may look like: an optional data URL prefix, then base64 (line
# breaks allowed, as in wrapped base64) in whole groups of 4 characters, padding only at
# the end: what the server's decoder (base64.b64decode(validate=True)) accepts, so the
# published schema and the server agree.
DATA_URL_PREFIX = r"data:image/[A-Za-z0-9.+-]{1,40};base64,"
_B64 = r"(?:[A-Za-z0-9+/][\r\n]*)"
IMAGE_B64_PATTERN = (
    rf"^({DATA_URL_PREFIX})?[\r\n]*(?:{_B64}{{4}})*"
    rf"(?:{_B64}{{4}}|{_B64}{{2}}=[\r\n]*=|{_B64}{{3}}=)[\r\n]*$"
)
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Extent = Annotated[float, Field(gt=0, le=MAX_COORDINATE)]

# A 1×1 PNG, so the examples can be sent as they are.
EXAMPLE_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def optional_list(max_length: int, description: str) -> Any:
    """A list field that may be left out (null) but not sent empty, of at most
    ``max_length`` items."""
    return Field(default=None, min_length=1, max_length=max_length, description=description)


# Static upper bounds; the published schema states the service's own (smaller) limits.
MAX_FRAMES_CAP = 100_000
MAX_EMBEDDING_CAP = 65_536


class FrameInput(BaseModel):
    """One frame of a query tracklet: an encoded image and the polyp's box in it."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str = Field(
        min_length=1,
        pattern=IMAGE_B64_PATTERN,
        description="The frame as base64 JPEG or PNG (a `data:image/...;base64,` prefix is "
        "accepted). At most the service's `max_image_bytes` once decoded and "
        "`max_image_pixels` pixels (read from the image header before decoding).",
    )
    bbox: tuple[Coordinate, Coordinate, Extent, Extent] = Field(
        description="The polyp's box `[x, y, w, h]` in pixels: `w > 0`, `h > 0`, every value "
        f"within ±{MAX_COORDINATE:.0f}.",
        examples=[[40.0, 32.0, 24.0, 20.0]],
    )

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, bbox: tuple[float, float, float, float]) -> tuple[float, ...]:
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"bbox must be 4 finite numbers [x, y, w, h], got {list(bbox)}")
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
                {"frames": [{"image_b64": EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
                {"embedding": [0.12, -0.05, 0.31]},
            ]
        },
    )

    tracklet_id: TrackletId | None = Field(default=None, description="An indexed tracklet's id.")
    frames: list[FrameInput] | None = optional_list(
        MAX_FRAMES_CAP,
        "The tracklet's frames in order (at most the service's "
        "`max_frames_per_request`, 256 by default).",
    )
    embedding: list[float] | None = optional_list(
        MAX_EMBEDDING_CAP,
        "An embedding of the service's encoder version; its size must equal the "
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


class Prediction(BaseModel):
    """A probe's prediction for one tracklet."""

    label: str = Field(description="The predicted class.")
    probability: float = Field(
        description="Calibrated probability of the positive class (diminutive for size, "
        "adenoma for histology), in [0, 1]."
    )
    probe_version: str = Field(description="The probe that made the prediction.")
    reliable: bool | None = Field(
        default=None,
        description="Whether the probe's validation AUROC reaches the service's "
        "`min_probe_auroc` (POLYPINDEX_MIN_PROBE_AUROC, default 0.7): only then is `label` "
        "a decision; false for a probe without a measured AUROC or one no longer "
        "installed; null where not judged (stored predictions read by id).",
    )
    decision: str | None = Field(
        default=None,
        description="`label` when `reliable`, else null: an unreliable probe's class is "
        "shown, never a decision.",
    )
    quality_reason: str | None = Field(
        default=None, description="Why the prediction is (not) reliable, in one sentence."
    )


def predictions_by_task(rows: Mapping[str, PredictionRow]) -> dict[str, Prediction]:
    """Stored predictions (task → row) as the API shows them."""
    return {
        task: Prediction.model_validate(row, from_attributes=True) for task, row in rows.items()
    }


class ReidRequest(BaseModel):
    """``POST /reid``: are two tracklets the same polyp?"""

    model_config = ConfigDict(extra="forbid")

    a: TrackletInput
    b: TrackletInput


class ReidResponse(BaseModel):
    """The two tracklets' similarity and the model's three-way same-polyp decision
    (docs/method.md#re-identification-decision)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "similarity": 0.82,
                    "probability": 0.694,
                    "same_polyp": False,
                    "answer": "uncertain",
                    "context": "within",
                    "reason": "p=0.694 is below the same-polyp point 0.910",
                    "estimable": True,
                    "threshold": 0.91,
                    "different_threshold": 0.12,
                    "label": "uncertain · p=0.69 (same needs ≥ 0.91)",
                    "calibrated": True,
                    "encoder_version": "hmve-demo-3f2a9c1b",
                }
            ]
        }
    )

    similarity: float = Field(description="Cosine similarity of the two embeddings.")
    probability: float | None = Field(
        description="The calibrated P(same polyp) in the pair's context (1 for the same "
        "tracklet or identical embeddings); null when there is none (a model without a "
        "calibration, or a pair whose context is not known)."
    )
    same_polyp: bool = Field(description='answer == "same".')
    answer: Literal["same", "different", "uncertain"] = Field(
        description="same: at or above the context's same-polyp point; different: at or "
        "below its different-polyp point; uncertain: anything else (see `reason`)."
    )
    context: str = Field(
        description="The pair's context: within (one procedure), within_cosine (one "
        "procedure, time or boxes not known), cross (two procedures) or unknown (a side "
        "given as frames or an embedding)."
    )
    reason: str | None = Field(
        default=None, description="Why the answer is what it is (always set for uncertain)."
    )
    estimable: bool = Field(
        default=False,
        description="Whether the context's probability is an estimate (false: the prior "
        "of a context without same-polyp pairs in the calibration data).",
    )
    threshold: float | None = Field(
        default=None,
        description="The context's same-polyp operating point; null where it has none.",
    )
    different_threshold: float | None = Field(
        default=None,
        description="The context's different-polyp operating point; null where it has none.",
    )
    label: str = Field(
        description="The answer in words with its probability, printed so that the printed "
        "numbers compare as the numbers do (never 'p=0.13 < 0.13')."
    )
    calibrated: bool = Field(
        default=False, description="Whether the model carries a fitted calibration."
    )
    encoder_version: str


class PredictRequest(BaseModel):
    """``POST /predict``: size and histology of one tracklet."""

    model_config = ConfigDict(extra="forbid")

    tracklet: TrackletInput
    tasks: list[Task] = Field(
        default_factory=lambda: list(ALL_TASKS),
        min_length=1,
        max_length=len(ALL_TASKS),
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
    encoder_runtime: dict[str, Any] | None = Field(
        default=None,
        description="What runs the encoder: runtime (onnxruntime / openvino), provider "
        "(ONNX Runtime execution provider or OpenVINO device), precision (fp32, bf16, fp16, "
        "int8), the load-time parity check against the model's reference embeddings, and "
        "fallback_reason when the runtime or precision asked for is not the one running; "
        "the encoder version is the same on every runtime. See docs/runtimes.md. Null when "
        "no model is loaded.",
    )
    index_size: int | None = Field(description="Vectors in the loaded index (null if not loaded).")
    index_state: str | None = Field(
        default=None,
        description='"ready", "rebuilding" (from the store, after a corrupt or unusable '
        'snapshot; searches answer 503 meanwhile) or "failed" (see `reasons`).',
    )
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
    auth: Literal["keys", "open"] | None = Field(
        default=None,
        description='"keys": every endpoint but this one and /metrics needs an API key; '
        '"open": no key is checked (a loopback-only service without keys, or opened on '
        "purpose); null before start-up.",
    )
    auth_reason: str | None = Field(default=None, description="Why the service runs in that mode.")
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="The re-identification calibration: `calibrated`; per context "
        "(within, within_cosine, cross) whether it is estimable, the answers it can give "
        "(same / different) with their held-out precision / NPV, and why not; "
        "`always_uncertain`: context → why every answer there is uncertain. Null when no "
        "model is loaded.",
    )


class LivenessResponse(BaseModel):
    """``GET /livez``: the process answers (nothing else is checked)."""

    status: Literal["alive"] = "alive"


class ReadinessResponse(BaseModel):
    """``GET /readyz``: whether the model, the store and the index are ready, and if not, why."""

    ready: bool = Field(description="True when every readiness check holds (HTTP 200, else 503).")
    missing: list[str] = Field(
        description="What is not ready, one sentence per failed check (model, database, "
        "index); empty when ready."
    )


PREDICT_EXAMPLES: dict[str, dict[str, Any]] = {
    "by_id": {
        "summary": "An indexed tracklet, both predictions",
        "value": {"tracklet": {"tracklet_id": 42}},
    },
    "frames_size_only": {
        "summary": "New frames, size only",
        "value": {
            "tracklet": {"frames": [{"image_b64": EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
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
            "a": {"frames": [{"image_b64": EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
            "b": {"tracklet_id": 57},
        },
    },
}
