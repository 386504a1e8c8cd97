"""The ``jobs`` table of a store: every query the job runner (:mod:`indexer.jobs`) makes.

Sessions come from the :class:`~polypindex.indexer.store.Store` (its engine and
session factory), never from a second engine. A claim is an atomic
``UPDATE ... WHERE status = 'queued'``, so several runners on one PostgreSQL database
never run a job twice. Rows are returned detached (the store's sessions do not expire
them on commit), as plain reads of their columns.
"""

from __future__ import annotations

from datetime import UTC, datetime
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

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (and its ``updated_at``)."""
        with self.store.sessions.begin() as session:
            session.execute(
                update(JobModel).where(JobModel.id == job_id).values(updated_at=utc_now(), **values)
            )

    def requeue_running(self) -> int:
        """Put every ``running`` job back to ``queued``; returns how many."""
        with self.store.sessions.begin() as session:
            result = session.execute(
                update(JobModel)
                .where(JobModel.status == "running")
                .values(status="queued", worker=None, updated_at=utc_now())
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def claim(self, worker: str) -> str | None:
        """Mark the oldest queued job that no other worker took first ``running`` by
        ``worker``; its id, or ``None`` when none is queued."""
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
                    .values(status="running", worker=worker, started_at=now, updated_at=now)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return job_id
        return None
