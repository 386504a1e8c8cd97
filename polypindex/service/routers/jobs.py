"""Indexing over HTTP: ``POST /procedures`` (a background job), ``GET /jobs``,
``GET /jobs/{job_id}``, ``DELETE /procedures/{uid}``.

Job bodies are one typed model per ``kind`` (service/job_schemas.py), so a malformed
job is a 422 at submission; paths in answers are shown relative to the data roots.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body, Path, Query, Response

from polypindex.indexer.faults import display_path, public_message
from polypindex.indexer.jobs import JobRecord
from polypindex.indexer.kinds.registry import KINDS, path_fields
from polypindex.indexer.reads import as_utc
from polypindex.service import backend
from polypindex.service.deps import JobsDep, OptionalUpkeepDep, SettingsDep, StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.job_schemas import (
    JOB_EXAMPLES,
    DeleteProcedureResponse,
    IndexRequest,
    JobListResponse,
    JobParamsShown,
    JobProgress,
    JobResponse,
    job_request,
)
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import MAX_UID_LENGTH, NO_CONTROL_CHARS
from polypindex.service.settings import Settings

router = documented_router("indexing")

# Job ids are 32 hex digits; anything printable is looked up (and is a 404 when unknown).
JobId = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=NO_CONTROL_CHARS, description="The job's id."),
]
ProcedureUidPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_UID_LENGTH,
        pattern=NO_CONTROL_CHARS,
        description="The procedure's UID (may contain `/`).",
    ),
]
PATH_PARAMS = path_fields()


def _shown(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    roots = settings.data_roots
    return {
        k: display_path(v, roots) if k in PATH_PARAMS and isinstance(v, str) else v
        for k, v in params.items()
    }


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def job_response(job: JobRecord, settings: Settings) -> JobResponse:
    """The job as answered: paths shown relative to the data roots, every time aware UTC
    (SQLite hands them back naive), progress and params typed."""
    return JobResponse(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        params=JobParamsShown.model_validate(_shown(job.params, settings)),
        progress=JobProgress.model_validate(job.progress),
        error=public_message(job.error, settings.data_roots) if job.error else None,
        created_at=as_utc(job.created_at),
        updated_at=as_utc(job.updated_at),
        started_at=_utc(job.started_at),
        finished_at=_utc(job.finished_at),
    )


def _kinds_sentence() -> str:
    """The input kinds and their required fields, as ``POST /procedures`` lists them."""
    listed = []
    for name, kind in KINDS.items():
        fields = ", ".join(f"`{f}`" for f in kind.required)
        listed.append(f"`{name}` ({'field ' if len(kind.required) == 1 else ''}{fields})")
    return ", ".join(listed[:-1]) + " or " + listed[-1] if len(listed) > 1 else listed[0]


SUBMIT_DESCRIPTION = (
    f"Queues an indexing job: `kind` is {_kinds_sentence()}, plus that kind's optional "
    "fields and no others (else 422). Every path must lie inside the service's data roots "
    "(`POLYPINDEX_DATA_ROOTS`), symlinks followed: else 403 `path_not_allowed` and nothing "
    "is written; a file found only when the job runs (a COCO image) that lies outside "
    "fails the job before anything is written. Poll `GET /jobs/{job_id}` (the `Location` "
    "header). Each procedure is committed whole or not at all; a job that fails keeps the "
    "procedures it finished."
)


@router.post(
    "/procedures",
    status_code=202,
    summary="Index new procedures (a background job)",
    description=SUBMIT_DESCRIPTION,
    responses=error_responses(403, 413, 422, 500, 503, 507),
)
def submit_procedures(
    body: Annotated[IndexRequest, Body(openapi_examples=JOB_EXAMPLES)],
    runner: JobsDep,
    settings: SettingsDep,
    response: Response,
) -> JobResponse:
    job = backend.submit_job(runner, *job_request(body))
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_response(job, settings)


@router.get(
    "/jobs/{job_id}",
    summary="An indexing job's status, progress and error",
    responses=error_responses(404, 422, 500, 503),
)
def get_job(job_id: JobId, runner: JobsDep, settings: SettingsDep) -> JobResponse:
    return job_response(runner.get(job_id), settings)


@router.get(
    "/jobs",
    summary="Indexing jobs, oldest first",
    responses=error_responses(422, 500, 503),
)
def list_jobs(
    runner: JobsDep,
    settings: SettingsDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed"] | None,
        Query(description="Only jobs with this status."),
    ] = None,
) -> JobListResponse:
    return JobListResponse(jobs=[job_response(j, settings) for j in runner.list(status)])


@router.delete(
    "/procedures/{uid:path}",
    summary="Delete a procedure: its tracklets and their vectors",
    responses=error_responses(404, 422, 500, 503, 507),
)
def delete_procedure(
    uid: ProcedureUidPath, settings: SettingsDep, store: StoreDep, upkeep: OptionalUpkeepDep
) -> DeleteProcedureResponse:
    """Removes the procedure's rows from the database and its vectors from the running
    index at once (snapshots follow in the background). Unknown UID: 404 `procedure_not_found`. Of
    several deletes of one procedure at once, exactly one answers 200.
    """
    removed = backend.delete_procedure(uid, store, upkeep, settings)
    return DeleteProcedureResponse(procedure_uid=uid, tracklets_removed=len(removed))
