"""Indexing over HTTP: ``POST /procedures`` (a background job), ``GET /jobs``,
``GET /jobs/{job_id}``, ``DELETE /procedures/{uid}``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query, Response

from polypindex.service import backend
from polypindex.service.deps import JobsDep, OptionalIndexDep, SettingsDep, StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import (
    DeleteProcedureResponse,
    IndexRequest,
    JobListResponse,
    JobResponse,
)

router = documented_router("indexing")


def job_response(job: backend.JobRecord) -> JobResponse:
    d = job.to_dict()
    return JobResponse(
        job_id=d["id"],
        kind=d["kind"],
        status=d["status"],
        params=d["params"],
        progress=d["progress"],
        error=d["error"],
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        started_at=d["started_at"],
        finished_at=d["finished_at"],
    )


@router.post(
    "/procedures",
    status_code=202,
    summary="Index new procedures (a background job)",
    responses=error_responses(403, 422, 500, 503),
)
def submit_procedures(body: IndexRequest, runner: JobsDep, response: Response) -> JobResponse:
    """Queues an indexing job: `kind` is `coco` (field `root`), `video` (`video`,
    `detections`) or `frames` (`folder`, `detections`), plus optional fields. Every path must
    lie inside the service's data roots (`POLYPINDEX_DATA_ROOTS`): else 403
    `path_not_allowed` and nothing is written. Poll `GET /jobs/{job_id}` (the `Location`
    header). Each procedure is committed whole or not at all; a job that fails keeps the
    procedures it finished.
    """
    job = backend.submit_job(runner, body.kind, body.params)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_response(job)


@router.get(
    "/jobs/{job_id}",
    summary="An indexing job's status, progress and error",
    responses=error_responses(404, 500, 503),
)
def get_job(job_id: str, runner: JobsDep) -> JobResponse:
    return job_response(runner.get(job_id))


@router.get(
    "/jobs",
    summary="Indexing jobs, oldest first",
    responses=error_responses(422, 500, 503),
)
def list_jobs(
    runner: JobsDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed"] | None,
        Query(description="Only jobs with this status."),
    ] = None,
) -> JobListResponse:
    return JobListResponse(jobs=[job_response(j) for j in runner.list(status)])


@router.delete(
    "/procedures/{uid:path}",
    summary="Delete a procedure: its tracklets and their vectors",
    responses=error_responses(404, 500, 503),
)
def delete_procedure(
    uid: str, settings: SettingsDep, store: StoreDep, index: OptionalIndexDep
) -> DeleteProcedureResponse:
    """Removes the procedure's rows from the database and its vectors from every index
    snapshot and from the running index. Unknown UID: 404 `procedure_not_found`.
    """
    removed = backend.delete_procedure(uid, store, index, settings)
    return DeleteProcedureResponse(procedure_uid=uid, tracklets_removed=len(removed))
