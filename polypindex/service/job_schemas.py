"""The bodies of the indexing endpoints: ``POST /procedures`` (one typed model per input
kind, a discriminated union on ``kind``), the job and delete responses.

Extra fields are forbidden, every path and UID refuses control characters and has a
length cap, every integer has a range, so a malformed job is a 422 at submission,
never a job that fails later in the worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from polypindex.service.schemas import MAX_ID, InputPath, ProcedureUid

MAX_TRACKLET_LENGTH = 1_000_000
MinTrackletLength = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_TRACKLET_LENGTH,
        description="Tracklets shorter than this many frames are not indexed (default 30).",
    ),
]
MinScore = Annotated[
    float,
    Field(ge=-1e9, le=1e9, description="Boxes scoring below it are ignored (default 0)."),
]
JOB_PATH_NOTE = (
    " Absolute, inside the service's data roots (symlinks are followed and must stay inside)."
)


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="Re-index procedures already stored.")
    min_tracklet_length: MinTrackletLength = 30


class CocoJob(_JobBase):
    """A COCO dataset folder: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/images``.
    Every image the annotations name must lie inside the data roots too."""

    kind: Literal["coco"]
    root: InputPath = Field(description="The dataset folder." + JOB_PATH_NOTE)
    split: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        default="test", description="The split (letters, digits, `_`, `-`)."
    )


class VideoJob(_JobBase):
    """A video file and its detections CSV (``frame,x,y,w,h,score[,track_id]``)."""

    kind: Literal["video"]
    video: InputPath = Field(description="The video file." + JOB_PATH_NOTE)
    detections: InputPath = Field(description="The detections CSV." + JOB_PATH_NOTE)
    uid: ProcedureUid | None = Field(default=None, description="Default: the video's stem.")
    first_frame: int = Field(
        default=0, ge=0, le=MAX_ID, description="The number of the video's first frame."
    )
    min_score: MinScore = 0.0


class FramesJob(_JobBase):
    """A folder of frame images (the frame number is the last number of each file name)
    and its detections CSV."""

    kind: Literal["frames"]
    folder: InputPath = Field(description="The frames folder." + JOB_PATH_NOTE)
    detections: InputPath = Field(description="The detections CSV." + JOB_PATH_NOTE)
    uid: ProcedureUid | None = Field(default=None, description="Default: the folder's name.")
    min_score: MinScore = 0.0


IndexRequest = Annotated[CocoJob | VideoJob | FramesJob, Field(discriminator="kind")]
"""``POST /procedures``: an indexing job, one model per ``kind`` (no other fields)."""

JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "coco": {
        "summary": "A COCO dataset folder",
        "value": {"kind": "coco", "root": "/data/coco/new", "split": "test"},
    },
    "video": {
        "summary": "A video and its detections",
        "value": {"kind": "video", "video": "/data/v/p1.mp4", "detections": "/data/v/p1.csv"},
    },
    "frames": {
        "summary": "A frames folder and its detections",
        "value": {
            "kind": "frames",
            "folder": "/data/f/p2",
            "detections": "/data/f/p2.csv",
            "min_tracklet_length": 10,
        },
    },
}


def job_params(job: CocoJob | VideoJob | FramesJob) -> dict[str, Any]:
    """The job's fields but ``kind``, as the job runner takes them (unset optionals left out)."""
    return job.model_dump(exclude={"kind"}, exclude_none=True)


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
    params: dict[str, Any] = Field(
        description="The request, its paths resolved and shown relative to the data roots "
        "(`<data_root>/...`; `<data_root:2>/...` for the second root, and so on)."
    )
    progress: dict[str, Any] = Field(
        description="Procedures and tracklets done, tracklets/s, ETA; when succeeded also "
        "`report` (what was indexed)."
    )
    error: str | None = Field(
        description="Why the job failed (exception class and message; paths relative to the "
        "data roots)."
    )
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
