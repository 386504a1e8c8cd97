"""The change log of a store: one numbered row per write to a procedure.

Every write a replica's index must follow (a procedure written, re-indexed with
``force``, deleted) adds one ``changes`` row in the same transaction as the write
(:func:`record_change`, called by :class:`~polypindex.indexer.store.Store`), with the
tracklet ids it added and removed. Row ids only grow (an autoincrement that never
reuses an id), so an index that recorded the last id it applied knows exactly what it
still lacks: the rows after it (:meth:`ChangeLog.after`), and how far behind it is
(:meth:`ChangeLog.behind`). On PostgreSQL a sequence number is drawn at insert, not
at commit, so two writers could commit out of number order and a reader in between
would skip the lower one: each write takes a transaction-level advisory lock before it
draws its number, held to its commit, so numbers are committed in order. SQLite
serialises writers anyway. docs/store.md#replicas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from polypindex.indexer.tables import ChangeModel
from polypindex.model.core.errors import ConflictError

if TYPE_CHECKING:  # the store imports this module to write its changes
    from polypindex.indexer.store import Store

# pg_advisory_xact_lock key of the change log ("CHANGE"), distinct from the migrations'
_PG_CHANGES_LOCK = 0x4348414E4745
WRITTEN = "written"
REPLACED = "replaced"
DELETED = "deleted"


@dataclass(frozen=True)
class Change:
    """One write, as read back from the log.

    Attributes:
        seq: its number (the ``changes`` row id; only grows).
        kind: ``written`` (new), ``replaced`` (an older copy removed) or ``deleted``.
        uid: the procedure.
        encoder_version: the version written or deleted (``None``: a delete of every version).
        added: the tracklet ids the write added.
        removed: the tracklet ids it removed.
        at: when it was committed (UTC).
    """

    seq: int
    kind: str
    uid: str
    encoder_version: str | None
    added: tuple[int, ...]
    removed: tuple[int, ...]
    at: datetime


@dataclass(frozen=True)
class Behind:
    """How far an index is behind the store: ``changes`` not yet applied, the newest
    number in the log, and the age in seconds of the oldest one not applied (0 when none)."""

    changes: int
    latest: int
    oldest_age_s: float


def conflict(uid: str, encoder_version: str) -> ConflictError:
    """The error of a write that met another writer's copy of the same procedure."""
    return ConflictError(
        f"procedure {uid!r} (encoder {encoder_version}) was written by another "
        f"indexer while this one was indexing it; this write was rolled back and the "
        f"other one stands. Index each procedure from one process at a time; "
        f"re-running skips it (or replaces it with --force)"
    )


def record_change(
    session: Session,
    kind: str,
    uid: str,
    encoder_version: str | None,
    added: Sequence[int],
    removed: Sequence[int],
) -> None:
    """Add the change of a write to ``session`` (the write's own transaction), as its
    last statement (the lock it takes on PostgreSQL is held until the commit)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHANGES_LOCK})
    session.add(
        ChangeModel(
            kind=kind,
            uid=uid,
            encoder_version=encoder_version,
            added_json=json.dumps([int(i) for i in added]),
            removed_json=json.dumps([int(i) for i in removed]),
        )
    )


def _aware(at: datetime) -> datetime:
    """SQLite hands time stamps back naive; they were written in UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _change(m: ChangeModel) -> Change:
    return Change(
        seq=int(m.id),
        kind=m.kind,
        uid=m.uid,
        encoder_version=m.encoder_version,
        added=tuple(int(i) for i in json.loads(m.added_json)),
        removed=tuple(int(i) for i in json.loads(m.removed_json)),
        at=_aware(m.at),
    )


class ChangeLog:
    """The ``changes`` of one store, read in order.

    A change of another encoder version still counts for an index of this one when it
    removed rows (a delete of every version is stored with no version).

    Args:
        store: the store whose database holds the log.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _of(query, encoder_version: str | None):  # type: ignore[no-untyped-def]
        if encoder_version is None:
            return query
        return query.where(
            (ChangeModel.encoder_version == encoder_version) | ChangeModel.encoder_version.is_(None)
        )

    def latest(self) -> int:
        """The newest change number (0 when the log is empty)."""
        with self.store.sessions() as session:
            return int(session.scalar(select(func.max(ChangeModel.id))) or 0)

    def after(
        self, seq: int, encoder_version: str | None = None, limit: int = 1000
    ) -> list[Change]:
        """The changes after number ``seq`` (of ``encoder_version`` when given), oldest first."""
        query = select(ChangeModel).where(ChangeModel.id > seq).order_by(ChangeModel.id)
        with self.store.sessions() as session:
            rows = session.scalars(self._of(query, encoder_version).limit(limit))
            return [_change(m) for m in rows]

    def behind(self, seq: int, encoder_version: str | None = None) -> Behind:
        """How far an index that applied the changes up to ``seq`` is behind the store."""
        query = select(func.count(), func.min(ChangeModel.at)).where(ChangeModel.id > seq)
        with self.store.sessions() as session:
            n, oldest = session.execute(self._of(query, encoder_version)).one()
            latest = int(session.scalar(select(func.max(ChangeModel.id))) or 0)
        age = 0.0 if oldest is None else (datetime.now(UTC) - _aware(oldest)).total_seconds()
        return Behind(changes=int(n), latest=latest, oldest_age_s=max(0.0, age))
