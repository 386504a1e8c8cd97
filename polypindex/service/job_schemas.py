"""The bodies of the indexing endpoints: ``POST /procedures`` (one typed model per input
kind, a discriminated union on ``kind``), the job and delete responses.

The job models are the input kinds' (:mod:`polypindex.indexer.kinds`, one per kind in
:data:`~polypindex.indexer.kinds.registry.KINDS`): extra fields are forbidden, every
path and UID refuses control characters and has a length cap, every integer has a
range, so a malformed job is a 422 at submission, never a job that fails later in the
worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from polypindex.indexer.kinds.base import JobParams
from polypindex.indexer.kinds.registry import KINDS

if TYPE_CHECKING:
    IndexRequest = JobParams
else:
    IndexRequest = Annotated[
        Union[tuple(kind.params for kind in KINDS.values())],  # noqa: UP007
        Field(discriminator="kind"),
    ]
"""``POST /procedures``: an indexing job, one model per ``kind`` (no other fields)."""

JOB_EXAMPLES: dict[str, dict[str, Any]] = {name: kind.example for name, kind in KINDS.items()}


def job_request(job: JobParams) -> tuple[str, dict[str, Any]]:
    """The job's kind, and its other fields as the job runner takes them (``None``
    optionals left out)."""
    fields = job.model_dump(exclude_none=True)
    return str(fields.pop("kind")), fields


class JobParamsShown(BaseModel):
    """A job's request as stored (``kind`` apart), paths relative to the data roots; the
    fields of its kind are set, the others left out (older jobs may carry other keys)."""

    model_config = ConfigDict(extra="allow")

    root: str | None = Field(default=None, description="coco: the COCO folder.")
    split: str | None = Field(default=None, description="coco: the split indexed.")
    video: str | None = Field(default=None, description="video: the video file.")
    folder: str | None = Field(default=None, description="frames: the frame folder.")
    file: str | None = Field(default=None, description="dicom: the DICOM file or folder.")
    detections: str | None = Field(default=None, description="The detections CSV.")
    uid: str | None = Field(default=None, description="The procedure UID given.")
    first_frame: int | None = Field(default=None, description="video: first frame read.")
    force: bool | None = Field(default=None, description="Re-index procedures already stored.")
    min_tracklet_length: int | None = None
    min_score: float | None = None
    linker: Literal["bytetrack", "greedy"] | None = None


class JobReport(BaseModel):
    """What a succeeded job indexed (``indexer.progress.IndexReport``)."""

    model_config = ConfigDict(extra="allow")

    procedures_indexed: int
    procedures_skipped: int
    tracklets: int
    frames: int
    images_decoded: int
    seconds: float
    index_size: int
    encoder_version: str
    indexed_uids: list[str] = Field(default_factory=list)
    tracklets_per_s: float | None = None
    frames_per_s: float | None = None


class JobProgress(BaseModel):
    """Where a job stands (``indexer.progress.Progress``); empty while queued."""

    model_config = ConfigDict(extra="allow")

    procedures_done: int | None = None
    procedures_total: int | None = None
    current_uid: str | None = None
    tracklets: int | None = None
    frames: int | None = None
    elapsed_s: float | None = None
    tracklets_per_s: float | None = None
    eta_s: float | None = None
    tracklets_total: int | None = None
    frames_total: int | None = None
    frames_per_s: float | None = None
    report: JobReport | None = Field(default=None, description="When succeeded: what it indexed.")


class JobResponse(BaseModel):
    """An indexing job as stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "6f1c0d2a9b7e4d0f8a3c5e2b1d4f6a80",
                    "kind": "coco",
                    "status": "running",
                    "params": {"root": "<data_root>/coco/new", "split": "test"},
                    "progress": {"procedures_done": 3, "procedures_total": 10},
                    "error": None,
                    "created_at": "2026-11-23T09:00:00Z",
                    "updated_at": "2026-11-23T09:00:05Z",
                    "started_at": "2026-11-23T09:00:01Z",
                    "finished_at": None,
                }
            ]
        }
    )

    job_id: str
    kind: str
    status: str = Field(description='"queued", "running", "succeeded" or "failed".')
    params: JobParamsShown = Field(
        description="The request, its paths resolved and shown relative to the data roots "
        "(`<data_root>/...`; `<data_root:2>/...` for the second root, and so on)."
    )
    progress: JobProgress = Field(
        description="Procedures and tracklets done, tracklets/s, ETA; when succeeded also "
        "`report` (what was indexed)."
    )
    error: str | None = Field(
        description="Why the job failed (exception class and message; paths relative to the "
        "data roots)."
    )
    created_at: datetime = Field(description="When it was submitted (UTC, with its offset).")
    updated_at: datetime = Field(description="Its last change (UTC).")
    started_at: datetime | None = Field(description="When a worker took it (UTC).")
    finished_at: datetime | None = Field(description="When it ended (UTC).")


class JobListResponse(BaseModel):
    """Jobs, oldest first."""

    jobs: list[JobResponse]


class DeleteProcedureResponse(BaseModel):
    """What ``DELETE /procedures/{uid}`` removed."""

    procedure_uid: str
    tracklets_removed: int = Field(description="Tracklets deleted (rows and index vectors).")
