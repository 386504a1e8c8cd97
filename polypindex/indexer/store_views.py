"""The store's side of the viewer's reads (:mod:`indexer.reads`): a page of procedures, a
procedure's tracklets as its timeline shows them (no embedding:
:class:`indexer.tables.TrackletSummary`), the procedure of a tracklet and the procedure
UIDs of many tracklets.

Part of the store layer (docs/architecture.md#the-store): the queries run in the
store's sessions; callers get records and plain rows, never a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from polypindex.indexer.store import Store
from polypindex.indexer.store_entities import entity_ids
from polypindex.indexer.tables import (
    PredictionModel,
    ProcedureModel,
    ProcedureRecord,
    TrackletModel,
    TrackletSummary,
    procedure_record,
)

_IN_CHUNK = 1000  # ids per IN (...) list, under SQLite's parameter limit


def _stored_time(store: Store, utc: datetime) -> datetime:
    """An aware UTC datetime as ``created_at`` compares with it: naive on SQLite (which
    stores it as naive text), aware elsewhere."""
    return utc.replace(tzinfo=None) if store.is_sqlite else utc


def procedure_page(
    store: Store,
    *,
    limit: int,
    offset: int,
    dataset_id: str | None = None,
    indexed_after: datetime | None = None,
    indexed_before: datetime | None = None,
    predicted: Sequence[tuple[str, str]] = (),
    encoder_version: str | None = None,
) -> tuple[list[ProcedureRecord], int]:
    """One page of the procedures that match, ordered by UID then encoder version, and how
    many match in all.

    Args:
        indexed_after / indexed_before: aware UTC datetimes, ``[after, before)``.
        predicted: ``(task, label)`` pairs that each need one tracklet predicted so.
    """
    query = select(ProcedureModel)
    count = select(func.count(ProcedureModel.id))
    conditions: list[Any] = []
    if dataset_id is not None:
        conditions.append(ProcedureModel.dataset_id == dataset_id)
    if indexed_after is not None:
        conditions.append(ProcedureModel.created_at >= _stored_time(store, indexed_after))
    if indexed_before is not None:
        conditions.append(ProcedureModel.created_at < _stored_time(store, indexed_before))
    if encoder_version is not None:
        conditions.append(ProcedureModel.encoder_version == encoder_version)
    for task, label in predicted:
        having = (
            select(TrackletModel.procedure_id)
            .join(PredictionModel, PredictionModel.tracklet_id == TrackletModel.id)
            .where(PredictionModel.task == task, PredictionModel.label == label)
        )
        conditions.append(ProcedureModel.id.in_(having))
    if conditions:
        query, count = query.where(*conditions), count.where(*conditions)
    query = (
        query.order_by(ProcedureModel.uid, ProcedureModel.encoder_version, ProcedureModel.id)
        .limit(limit)
        .offset(offset)
    )
    with store.sessions() as session:
        total = int(session.scalar(count) or 0)
        rows = [procedure_record(m) for m in session.scalars(query)]
    return rows, total


def tracklet_summaries(store: Store, procedure_id: int) -> list[TrackletSummary]:
    """The tracklets of one stored procedure (its row id) by start frame then id, with their
    stored predictions and polyp entities."""
    query = (
        select(
            TrackletModel.id,
            TrackletModel.key,
            TrackletModel.start_frame,
            TrackletModel.end_frame,
            TrackletModel.n_frames,
            TrackletModel.identity_label,
            TrackletModel.thumbnail_path,
        )
        .where(TrackletModel.procedure_id == procedure_id)
        .order_by(TrackletModel.start_frame, TrackletModel.id)
    )
    with store.sessions() as session:
        rows = session.execute(query).all()
    predictions = store.predictions_for(int(r.id) for r in rows)
    entities = entity_ids(store, (int(r.id) for r in rows))
    return [
        TrackletSummary(
            id=int(r.id),
            key=r.key,
            start_frame=int(r.start_frame),
            end_frame=int(r.end_frame),
            n_frames=int(r.n_frames),
            identity_label=r.identity_label,
            has_thumbnail=bool(r.thumbnail_path),
            predictions=predictions.get(int(r.id), {}),
            entity_id=entities.get(int(r.id)),
        )
        for r in rows
    ]


def procedure_of_tracklet(store: Store, tracklet_id: int) -> ProcedureRecord | None:
    """The procedure row a tracklet belongs to, or ``None`` when there is none."""
    query = (
        select(ProcedureModel)
        .join(TrackletModel, TrackletModel.procedure_id == ProcedureModel.id)
        .where(TrackletModel.id == int(tracklet_id))
    )
    with store.sessions() as session:
        model = session.scalar(query)
        return None if model is None else procedure_record(model)


def procedure_uids(store: Store, ids: Sequence[int]) -> dict[int, str]:
    """``{tracklet id: procedure UID}`` for the given tracklets that exist."""
    out: dict[int, str] = {}
    with store.sessions() as session:
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = list(ids[start : start + _IN_CHUNK])
            query = (
                select(TrackletModel.id, ProcedureModel.uid)
                .join(ProcedureModel, TrackletModel.procedure_id == ProcedureModel.id)
                .where(TrackletModel.id.in_(chunk))
            )
            out.update((int(i), str(uid)) for i, uid in session.execute(query))
    return out
