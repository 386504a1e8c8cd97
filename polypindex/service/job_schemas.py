"""The bodies of the indexing endpoints: ``POST /procedures`` (one typed model per input
kind, a discriminated union on ``kind``), the job and delete responses.

The job models are the input kinds' (:mod:`polypindex.indexer.kinds`, one per kind in
:data:`~polypindex.indexer.kinds.registry.KINDS`): extra fields are forbidden, every
path and UID refuses control characters and has a length cap, every integer has a
range, so a malformed job is a 422 at submission, never a job that fails later in the
worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

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
