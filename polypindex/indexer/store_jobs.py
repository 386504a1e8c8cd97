"""The store's side of the ``jobs`` table (the indexing jobs of :mod:`indexer.jobs`).

Part of the store layer (docs/architecture.md#the-store): the queries run in the
store's sessions; callers get plain values, never a session.
"""

from __future__ import annotations

from sqlalchemy import func, select

from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel


def job_status_counts(store: Store) -> dict[str, int]:
    """``{status: jobs}`` for the statuses that have at least one job."""
    query = select(JobModel.status, func.count()).group_by(JobModel.status)
    with store.sessions() as session:
        return {str(status): int(n) for status, n in session.execute(query)}
