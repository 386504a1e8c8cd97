"""Indexing jobs with their state in the database, run in the background (docs/store.md, issue 4).

What ``POST /procedures`` and ``GET /jobs/{id}`` need, without HTTP:

- :meth:`JobRunner.submit` checks the request (input paths must lie inside the
  configured data roots; the files must exist) and inserts a ``queued`` row;
  a refused request writes nothing.
- A worker thread claims queued jobs one at a time (an atomic
  ``UPDATE ... WHERE status = 'queued'``, so several runners on one PostgreSQL
  database never run a job twice), runs :func:`indexer.pipeline.index_sources`
  and writes its progress (frames and tracklets done and in total, rates, ETA) to the
  row after each procedure and, within a long one, about once a second.
- A job ends ``succeeded`` with the report, or ``failed`` with the error
  message (the exception's class and text, never a traceback; a storage fault
  such as a full disk is named as one, :mod:`indexer.faults`). Writing that final
  state is retried, and when the store still refuses it the worker keeps it and
  writes it as soon as it can: a job never stays ``running`` silently.
- Confinement: the request's paths at submission, and again with every file the
  job will read (COCO images, frame files) when it starts, before anything is
  read or written, must lie inside the data roots, symlinks followed.
- Sources are stored relative to their data root (or the home):
  :mod:`indexer.locations`, so a moved home still reads them.
- Jobs survive a restart: :meth:`JobRunner.start` puts back to ``queued`` the
  jobs a dead process left ``running``; indexing is idempotent, so re-running
  one only finishes what was not committed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select, update

from polypindex.indexer.embed import Embedder
from polypindex.indexer.faults import display_path, public_message, storage_fault
from polypindex.indexer.generations import IndexSink
from polypindex.indexer.locations import Anchors
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.progress import Progress
from polypindex.indexer.sources import (
    ProcedureSource,
    SourceOptions,
    check_in_roots,
    coco_sources,
    frames_source,
    video_source,
)
from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel
from polypindex.indexer.vectors import IndexPolicy
from polypindex.model.core.errors import InvalidInputError, NotFoundError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.scoring.probe import Probe

JOB_KINDS = ("coco", "video", "frames")
STATUSES = ("queued", "running", "succeeded", "failed")
# Which request fields are paths (checked against the data roots), per kind.
_PATH_FIELDS = {
    "coco": ("root",),
    "video": ("video", "detections"),
    "frames": ("folder", "detections"),
}
_FOLDER_FIELDS = {"root", "folder"}
_REQUIRED = {
    "coco": ("root",),
    "video": ("video", "detections"),
    "frames": ("folder", "detections"),
}
_OPTIONAL = {
    "coco": ("split", "force", "min_tracklet_length"),
    "video": ("uid", "first_frame", "min_score", "force", "min_tracklet_length"),
    "frames": ("uid", "min_score", "force", "min_tracklet_length"),
}


class JobNotFoundError(NotFoundError):
    """No job has the requested id."""


@dataclass(frozen=True)
class JobRecord:
    """A job as stored (a plain value)."""

    id: str
    kind: str
    status: str
    params: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    worker: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "params": self.params,
            "progress": self.progress,
            "error": self.error,
            "worker": self.worker,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _record(m: JobModel) -> JobRecord:
    return JobRecord(
        id=m.id,
        kind=m.kind,
        status=m.status,
        params=json.loads(m.params_json),
        progress=json.loads(m.progress_json),
        error=m.error,
        worker=m.worker,
        created_at=m.created_at,
        updated_at=m.updated_at,
        started_at=m.started_at,
        finished_at=m.finished_at,
    )


def _records(store: Store, query: Select[JobModel]) -> list[JobRecord]:
    with store.sessions() as session:
        return [_record(m) for m in session.scalars(query)]


def validate_request(
    kind: str, params: dict[str, Any], data_roots: Sequence[str | Path]
) -> dict[str, Any]:
    """Check an indexing request; return it with its paths resolved.

    Raises:
        InvalidInputError: unknown kind, missing or unknown fields, a path that does not exist.
        PathNotAllowedError: a path outside the data roots.
    """
    if kind not in JOB_KINDS:
        raise InvalidInputError(f"unknown job kind {kind!r}; expected one of {list(JOB_KINDS)}")
    missing = [f for f in _REQUIRED[kind] if not params.get(f)]
    if missing:
        raise InvalidInputError(f"a {kind!r} job needs field(s) {missing}")
    unknown = sorted(set(params) - set(_REQUIRED[kind]) - set(_OPTIONAL[kind]))
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {unknown} for a {kind!r} job; allowed: "
            f"{[*_REQUIRED[kind], *_OPTIONAL[kind]]}"
        )
    out = dict(params)
    for name in _PATH_FIELDS[kind]:
        path = check_in_roots(str(params[name]), data_roots, name)
        shown = display_path(path, data_roots)
        if not path.exists():
            raise InvalidInputError(f"{name}: {shown} does not exist")
        want_dir = name in _FOLDER_FIELDS
        if want_dir != path.is_dir():
            raise InvalidInputError(f"{name}: {shown} is not a {'folder' if want_dir else 'file'}")
        out[name] = str(path)
    if kind == "coco":  # the annotation file is known now: check it now
        from polypindex.model.data.coco import annotation_path  # pycocotools is slow to import

        split = str(params.get("split", "test"))
        annotations = check_in_roots(
            annotation_path(out["root"], split),
            data_roots,
            f"the annotation file of split {split!r}",
        )
        if not annotations.is_file():
            raise InvalidInputError(
                f"root: {display_path(annotations, data_roots)} does not exist "
                f"(expected ROOT/annotations/instances_{split}.json)"
            )
    return out


def build_sources(
    kind: str, params: dict[str, Any], data_roots: Sequence[str | Path] | None = None
) -> list[ProcedureSource]:
    """The procedures of a validated request.

    With ``data_roots``, the request's paths are checked again (a symlink may have
    changed since it was queued) and so is every file the sources will read (COCO
    images, frame files), before anything is read or written.
    """
    if data_roots is not None:
        for name in _PATH_FIELDS[kind]:
            check_in_roots(params[name], data_roots, name)
    config = TrackletConfig(min_tracklet_length=int(params.get("min_tracklet_length", 30)))
    if kind == "coco":
        return coco_sources(params["root"], params.get("split", "test"), config, roots=data_roots)
    # a video or a frames folder, each with its detections CSV
    detections, uid = params["detections"], params.get("uid")
    options: SourceOptions = {"config": config, "min_score": float(params.get("min_score", 0.0))}
    if kind == "video":
        first_frame = int(params.get("first_frame", 0))
        return [video_source(params["video"], detections, uid, first_frame=first_frame, **options)]
    return [frames_source(params["folder"], detections, uid, roots=data_roots, **options)]


class JobRunner:
    """Runs indexing jobs in one background thread; their state lives in ``jobs``.

    Args:
        store: the store (also holds the jobs table).
        index_dir: index root.
        encoder: the embedder every job uses.
        data_roots: folders inputs must lie in; an empty list refuses every input.
        policy: index kind policy.
        poll_s: how often the idle worker looks for queued jobs.
        sink: where jobs put the vectors they commit (the service's serving index,
            ``service.upkeep.ServingSink``); default: each job opens the index generation.
        home: the home; with the data roots, what stored sources are relative to
            (:mod:`indexer.locations`).
    """

    def __init__(
        self,
        store: Store,
        index_dir: str | Path,
        encoder: Embedder,
        data_roots: Sequence[str | Path],
        *,
        policy: IndexPolicy | None = None,
        poll_s: float = 0.5,
        probes: Sequence[Probe] = (),
        sink: IndexSink | None = None,
        home: str | Path | None = None,
    ) -> None:
        self.store = store
        self.probes = tuple(probes)
        self.index_dir = Path(index_dir)
        self.encoder = encoder
        self.data_roots = [Path(r) for r in data_roots]
        self.policy = policy
        self.poll_s = poll_s
        self.sink = sink
        self.anchors = Anchors(Path(home) if home is not None else None, tuple(self.data_roots))
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Final job states that could not be written yet (job id -> column values).
        self.unrecorded: dict[str, dict[str, Any]] = {}
        self.finish_attempts = 3
        self.retry_s = 0.2

    # -- the API side ------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Validate a request and queue it; nothing is written when it is refused."""
        checked = validate_request(kind, params, self.data_roots)
        now = _now()
        model = JobModel(
            id=uuid.uuid4().hex,
            kind=kind,
            status="queued",
            params_json=json.dumps(checked, sort_keys=True),
            progress_json="{}",
            created_at=now,
            updated_at=now,
        )
        with self.store.sessions.begin() as session:
            session.add(model)
        self._wake.set()
        return self.get(model.id)

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raises JobNotFoundError."""
        found = _records(self.store, select(JobModel).where(JobModel.id == job_id))
        if not found:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return found[0]

    def list(self, status: str | None = None) -> list[JobRecord]:
        """Jobs, oldest first (of one status when given)."""
        query = select(JobModel).order_by(JobModel.created_at, JobModel.id)
        if status is not None:
            query = query.where(JobModel.status == status)
        return _records(self.store, query)

    # -- the worker side ---------------------------------------------------------------

    def recover(self) -> int:
        """Put back to ``queued`` the jobs left ``running`` by a process that died; returns how many.

        Call it once at start-up, when no other runner is alive on this database.
        """
        with self.store.sessions.begin() as session:
            result = session.execute(
                update(JobModel)
                .where(JobModel.status == "running")
                .values(status="queued", worker=None, updated_at=_now())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _claim(self) -> str | None:
        with self.store.sessions() as session:
            candidates = list(
                session.scalars(
                    select(JobModel.id)
                    .where(JobModel.status == "queued")
                    .order_by(JobModel.created_at, JobModel.id)
                    .limit(5)
                )
            )
        for job_id in candidates:
            with self.store.sessions.begin() as session:
                now = _now()
                result = session.execute(
                    update(JobModel)
                    .where(JobModel.id == job_id, JobModel.status == "queued")
                    .values(
                        status="running", worker=self.worker_name, started_at=now, updated_at=now
                    )
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return job_id
        return None

    def _set(self, job_id: str, **values: Any) -> None:
        with self.store.sessions.begin() as session:
            session.execute(
                update(JobModel).where(JobModel.id == job_id).values(updated_at=_now(), **values)
            )

    def run_one(self) -> JobRecord | None:
        """Claim and run one queued job in this thread; ``None`` when none is queued."""
        job_id = self._claim()
        if job_id is None:
            return None
        job = self.get(job_id)

        def progress(p: Progress) -> None:
            self._set(job_id, progress_json=json.dumps(p.to_dict()))

        try:
            sources = build_sources(job.kind, job.params, self.data_roots)
            report = index_sources(
                sources,
                self.store,
                self.index_dir,
                self.encoder,
                force=bool(job.params.get("force", False)),
                progress=False,
                on_progress=progress,
                policy=self.policy,
                probes=self.probes,
                sink=self.sink,
                anchors=self.anchors,
            )
        except Exception as exc:
            error = self.describe(exc)
            logging.getLogger(__name__).warning("job %s failed: %s", job_id, error)
            return self._finish(job, status="failed", error=error, finished_at=_now())
        try:
            current = self.get(job_id).progress
            self._set(
                job_id,
                status="succeeded",
                progress_json=json.dumps({**current, "report": report.to_dict()}),
                finished_at=_now(),
            )
        except Exception as exc:  # indexed, but the job row cannot be written
            error = f"the job's result could not be recorded: {self.describe(exc)}"
            return self._finish(job, status="failed", error=error, finished_at=_now())
        return self.get(job_id)

    def describe(self, exc: BaseException) -> str:
        """A job's error message: a storage fault named as such, else the exception's class
        and message, paths shown relative to the data roots, no SQL."""
        fault = storage_fault(exc)
        if fault is not None:
            return f"StorageFault ({fault.kind}): {fault.message}"
        return f"{type(exc).__name__}: {public_message(str(exc), self.data_roots)}"

    def _finish(self, job: JobRecord, **values: Any) -> JobRecord:
        """Write a job's final state, retried; when even that fails (a full disk, a
        read-only store), keep it and try again from the worker loop (and a restart
        queues the job again): the job never stays ``running`` silently."""
        for attempt in range(self.finish_attempts):
            try:
                self._set(job.id, **values)
                return self.get(job.id)
            except Exception:
                logging.getLogger(__name__).exception(
                    "cannot record job %s as %s (attempt %d)", job.id, values["status"], attempt + 1
                )
                time.sleep(self.retry_s * (attempt + 1))
        self.unrecorded[job.id] = values
        return replace(job, status=str(values["status"]), error=values.get("error"))

    def retry_unrecorded(self) -> int:
        """Write the final states that could not be written before; returns how many remain."""
        for job_id, values in list(self.unrecorded.items()):
            try:
                self._set(job_id, **values)
            except Exception:
                continue
            del self.unrecorded[job_id]
        return len(self.unrecorded)

    def start(self) -> None:
        """Recover interrupted jobs and start the worker thread."""
        if self._thread is not None:
            return
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="polypindex-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current job (a job cut short is recovered at the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                # while the store still cannot be written, run nothing new
                stuck = bool(self.unrecorded) and self.retry_unrecorded() > 0
                ran = None if stuck else self.run_one()
            except Exception:  # the database is away: keep the thread alive, retry later
                logging.getLogger(__name__).exception("job worker error")
                ran = None
            if ran is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
