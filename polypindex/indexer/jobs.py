"""Indexing jobs with their state in the database, run in the background (docs/store.md).

What ``POST /procedures`` and ``GET /jobs/{id}`` need, without HTTP:

- :meth:`JobRunner.submit` checks the request (input paths must lie inside the
  configured data roots; the files must exist) and inserts a ``queued`` row;
  a refused request writes nothing.
- A worker thread claims queued jobs one at a time (``SELECT ... FOR UPDATE SKIP
  LOCKED`` on PostgreSQL, an atomic ``UPDATE ... WHERE status = 'queued'`` on SQLite:
  :mod:`indexer.job_store`, so several runners on one database never run a job
  twice), holds it with a lease it renews every ``lease_s / 4`` seconds, runs :func:`indexer.pipeline.index_sources`
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
- Jobs survive a restart: the runner puts back to ``queued`` the jobs whose lease
  expired (their process died), at start and every ``lease_s / 2`` seconds after,
  never a job another live runner holds; indexing is idempotent, so re-running one
  only finishes what was not committed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from polypindex.indexer.embed import Embedder
from polypindex.indexer.faults import display_path, public_message, storage_fault
from polypindex.indexer.generations import IndexSink
from polypindex.indexer.job_store import JobStore, utc_now
from polypindex.indexer.kinds.base import InputKind, P
from polypindex.indexer.kinds.registry import input_kind
from polypindex.indexer.locations import Anchors
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.progress import Progress
from polypindex.indexer.sources import ProcedureSource, check_in_roots
from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel
from polypindex.indexer.vectors import IndexPolicy
from polypindex.indexer.worker import BackgroundWorker
from polypindex.model.core.errors import InvalidInputError, NotFoundError
from polypindex.model.scoring.probe import Probe

STATUSES = ("queued", "running", "succeeded", "failed")
logger = logging.getLogger(__name__)


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


_DECODED = {"params": "params_json", "progress": "progress_json"}  # JSON text columns


def _record(m: JobModel) -> JobRecord:
    values = {f.name: getattr(m, _DECODED.get(f.name, f.name)) for f in fields(JobRecord)}
    return JobRecord(**{k: json.loads(v) if k in _DECODED else v for k, v in values.items()})


def validate_request(
    kind: str, params: dict[str, Any], data_roots: Sequence[str | Path]
) -> dict[str, Any]:
    """Check an indexing request; return it with its paths resolved.

    The kind's job model checks the fields (:mod:`polypindex.indexer.kinds`); here, what
    needs the file system: each path field inside the data roots, there, a folder or a
    file as the field says, then the kind's own check (the COCO annotation file).

    Raises:
        InvalidInputError: unknown kind, missing, unknown or invalid fields, a path that
            does not exist.
        PathNotAllowedError: a path outside the data roots.
    """
    spec = input_kind(kind)
    job = spec.parse(params)
    resolved: dict[str, str] = {}
    for name, field in spec.path_fields.items():
        value = getattr(job, name)
        if value is None:
            continue
        path = check_in_roots(value, data_roots, name)
        shown = display_path(path, data_roots)
        if not path.exists():
            raise InvalidInputError(f"{name}: {shown} does not exist")
        if field.folder != path.is_dir():
            raise InvalidInputError(
                f"{name}: {shown} is not a {'folder' if field.folder else 'file'}"
            )
        resolved[name] = str(path)
    if spec.check is not None:
        spec.check(job.model_copy(update=resolved), data_roots)
    return {**params, **resolved}


def build_sources(
    spec: InputKind[P], job: P, data_roots: Sequence[str | Path] | None = None
) -> list[ProcedureSource]:
    """The procedures of a validated request (``job``, of kind ``spec``).

    With ``data_roots``, the request's paths are checked again (a symlink may have
    changed since it was queued) and so is every file the sources will read (COCO
    images, frame files), before anything is read or written.
    """
    if data_roots is not None:
        for name in spec.path_fields:
            value = getattr(job, name)
            if value is not None:
                check_in_roots(value, data_roots, name)
    return spec.job_sources(job, data_roots)


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
        self.jobs = JobStore(store)
        self._worker = BackgroundWorker(
            "polypindex-jobs",
            self._work,
            lambda: self.poll_s,
            error="job worker error",
            logger=logger,
        )
        # Final job states that could not be written yet (job id -> column values).
        self.unrecorded: dict[str, dict[str, Any]] = {}
        self.finish_attempts = 3
        self.retry_s = 0.2
        # a running job's lease: renewed every lease_s / 4, taken back after lease_s
        self.lease_s = 60.0
        self._recovered_at = 0.0

    # -- the API side ------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Validate a request and queue it; nothing is written when it is refused."""
        checked = validate_request(kind, params, self.data_roots)
        now = utc_now()
        model = JobModel(
            id=uuid.uuid4().hex,
            kind=kind,
            status="queued",
            params_json=json.dumps(checked, sort_keys=True),
            progress_json="{}",
            created_at=now,
            updated_at=now,
        )
        self.jobs.insert(model)
        self._worker.wake()
        return self.get(model.id)

    def get(self, job_id: str) -> JobRecord:
        """The job with this id; raises JobNotFoundError."""
        found = self.jobs.find(job_id)
        if found is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return _record(found)

    def list(self, status: str | None = None) -> list[JobRecord]:
        """Jobs, oldest first (of one status when given)."""
        return [_record(m) for m in self.jobs.list(status)]

    # -- the worker side ---------------------------------------------------------------

    def recover(self) -> int:
        """Put back to ``queued`` the ``running`` jobs whose lease expired (their process
        died or hangs); returns how many. Jobs other live runners hold are left alone."""
        self._recovered_at = time.monotonic()
        return self.jobs.requeue_expired(self.lease_s)

    @contextmanager
    def _lease(self, job_id: str) -> Iterator[None]:
        """Renew this runner's lease on ``job_id`` from a thread while the job runs."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_s / 4):
                try:
                    if not self.jobs.heartbeat(job_id, self.worker_name):
                        logger.warning("job %s: lease lost", job_id)
                except Exception:
                    logger.exception("job %s: cannot renew the lease", job_id)

        thread = threading.Thread(target=renew, name="polypindex-job-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _claim(self) -> str | None:
        return self.jobs.claim(self.worker_name)

    def _set(self, job_id: str, **values: Any) -> None:
        # a runner whose lease was taken back (it hung) no longer writes the job
        if not self.jobs.update(job_id, held_by=self.worker_name, **values):
            logger.warning("job %s is no longer held by %s: not updated", job_id, self.worker_name)

    def run_one(self) -> JobRecord | None:
        """Claim and run one queued job in this thread; ``None`` when none is queued."""
        job_id = self._claim()
        if job_id is None:
            return None
        job = self.get(job_id)

        def progress(p: Progress) -> None:
            self._set(job_id, progress_json=json.dumps(p.to_dict()))

        try:
            spec = input_kind(job.kind)
            request = spec.parse(job.params)
            with self._lease(job_id):
                report = index_sources(
                    build_sources(spec, request, self.data_roots),
                    self.store,
                    self.index_dir,
                    self.encoder,
                    force=request.force,
                    progress=False,
                    on_progress=progress,
                    policy=self.policy,
                    probes=self.probes,
                    sink=self.sink,
                    anchors=self.anchors,
                )
        except Exception as exc:
            error = self.describe(exc)
            logger.warning("job %s failed: %s", job_id, error)
            return self._finish(job, status="failed", error=error, finished_at=utc_now())
        try:
            current = self.get(job_id).progress
            self._set(
                job_id,
                status="succeeded",
                progress_json=json.dumps({**current, "report": report.to_dict()}),
                finished_at=utc_now(),
            )
        except Exception as exc:  # indexed, but the job row cannot be written
            error = f"the job's result could not be recorded: {self.describe(exc)}"
            return self._finish(job, status="failed", error=error, finished_at=utc_now())
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
                logger.exception(
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
        if self._worker.running:
            return
        self.recover()
        self._worker.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current job (a job cut short is recovered at the next start)."""
        self._worker.stop(timeout)

    def _work(self) -> bool:
        """One pass of the worker thread: whether it ran a job (then it looks again at once)."""
        if self.unrecorded and self.retry_unrecorded() > 0:
            return False  # while the store still cannot be written, run nothing new
        if time.monotonic() - self._recovered_at >= self.lease_s / 2:
            self.recover()
        return self.run_one() is not None
