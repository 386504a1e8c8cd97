"""The ``jobs`` table of a store: every query the job runner (:mod:`indexer.jobs`) makes.

Sessions come from the :class:`~polypindex.indexer.store.Store` (its engine and
session factory), never from a second engine. A claim takes the oldest queued row
with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (an atomic
``UPDATE ... WHERE status = 'queued'`` on SQLite, whose writers are serialised), so
several runners on one database never run a job twice. A running job holds a lease:
its worker renews ``heartbeat_at`` (:meth:`JobStore.heartbeat`), and only a job whose
lease expired is queued again (:meth:`JobStore.requeue_expired`): a restarted replica
never takes a job another live replica runs. Rows are returned detached (the store's
sessions do not expire them on commit), as plain reads of their columns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel

CLAIM_CANDIDATES = 5


def utc_now() -> datetime:
    """The time stamps of job rows."""
    return datetime.now(UTC)


class JobStore:
    """The jobs of one store.

    Args:
        store: the store whose database holds the ``jobs`` table.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def insert(self, job: JobModel) -> None:
        with self.store.sessions.begin() as session:
            session.add(job)

    def find(self, job_id: str) -> JobModel | None:
        with self.store.sessions() as session:
            return session.get(JobModel, job_id)

    def list(self, status: str | None = None) -> list[JobModel]:
        """Jobs, oldest first (of one status when given)."""
        query = select(JobModel).order_by(JobModel.created_at, JobModel.id)
        if status is not None:
            query = query.where(JobModel.status == status)
        with self.store.sessions() as session:
            return list(session.scalars(query))

    def status_counts(self) -> dict[str, int]:
        """``{status: jobs}`` for the statuses that have at least one job."""
        query = select(JobModel.status, func.count()).group_by(JobModel.status)
        with self.store.sessions() as session:
            return {str(status): int(n) for status, n in session.execute(query)}

    def update(self, job_id: str, held_by: str | None = None, **values: Any) -> bool:
        """Set columns of one job (and its ``updated_at``); with ``held_by``, only while
        that worker still holds the job (its lease was not taken back). Whether a row
        was written."""
        query = update(JobModel).where(JobModel.id == job_id)
        if held_by is not None:
            query = query.where(JobModel.worker == held_by)
        with self.store.sessions.begin() as session:
            result = session.execute(query.values(updated_at=utc_now(), **values))
            return result.rowcount == 1  # type: ignore[attr-defined]

    def requeue_expired(self, lease_s: float) -> int:
        """Put back to ``queued`` the ``running`` jobs whose lease was last renewed more
        than ``lease_s`` seconds ago (their worker died or hangs); returns how many."""
        cutoff = utc_now() - timedelta(seconds=lease_s)
        renewed = func.coalesce(JobModel.heartbeat_at, JobModel.updated_at)
        with self.store.sessions.begin() as session:
            result = session.execute(
                update(JobModel)
                .where(JobModel.status == "running", renewed < cutoff)
                .values(status="queued", worker=None, heartbeat_at=None, updated_at=utc_now())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Renew ``worker``'s lease on a running job; ``False`` when it no longer holds it."""
        with self.store.sessions.begin() as session:
            result = session.execute(
                update(JobModel)
                .where(
                    JobModel.id == job_id,
                    JobModel.status == "running",
                    JobModel.worker == worker,
                )
                .values(heartbeat_at=utc_now())
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def claim(self, worker: str) -> str | None:
        """Mark the oldest queued job that no other worker took first ``running`` by
        ``worker`` (its lease starts now); its id, or ``None`` when none is queued."""
        if self.store.engine.dialect.name == "postgresql":
            return self._claim_locked(worker)
        with self.store.sessions() as session:
            candidates = list(
                session.scalars(
                    select(JobModel.id)
                    .where(JobModel.status == "queued")
                    .order_by(JobModel.created_at, JobModel.id)
                    .limit(CLAIM_CANDIDATES)
                )
            )
        for job_id in candidates:
            with self.store.sessions.begin() as session:
                now = utc_now()
                result = session.execute(
                    update(JobModel)
                    .where(JobModel.id == job_id, JobModel.status == "queued")
                    .values(_running(worker, now))
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return job_id
        return None

    def _claim_locked(self, worker: str) -> str | None:
        """The claim on PostgreSQL: lock the oldest queued row no one else has locked."""
        with self.store.sessions.begin() as session:
            job_id = session.scalar(
                select(JobModel.id)
                .where(JobModel.status == "queued")
                .order_by(JobModel.created_at, JobModel.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job_id is None:
                return None
            session.execute(
                update(JobModel).where(JobModel.id == job_id).values(_running(worker, utc_now()))
            )
            return str(job_id)


def _running(worker: str, now: datetime) -> dict[str, Any]:
    """The columns of a job just claimed by ``worker``."""
    return {
        "status": "running",
        "worker": worker,
        "started_at": now,
        "updated_at": now,
        "heartbeat_at": now,
    }
