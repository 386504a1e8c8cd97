"""The reads on a search's path, each one prepared query (docs/search.md).

:func:`query_tracklet` is ``Store.get_tracklet`` (the row a query by id names).

:func:`hit_records` reads, for a list of tracklet ids, the fields a hit carries
(procedure UID, key, frame range, identity label, polyp entity) and every stored
prediction in one ``SELECT`` (tracklets joined to procedures, left-joined to entities
and predictions), over a
plain connection (no ORM session, no embedding bytes). A hit whose row is gone
(deleted since the index answered) is simply absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, bindparam, select

from polypindex.indexer.tables import (
    EntityModel,
    PredictionModel,
    PredictionRow,
    ProcedureModel,
    TrackletModel,
    TrackletRecord,
    embedding_from_bytes,
)
from polypindex.model.core.errors import TrackletNotFoundError

_CHUNK = 900  # ids per IN (...) list, under SQLite's parameter limit


@dataclass(frozen=True)
class HitRecord:
    """A hit's stored facts (a plain value; new fields go at the end)."""

    id: int
    procedure_uid: str
    key: str
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None
    entity_id: int | None = None
    predictions: dict[str, PredictionRow] = field(default_factory=dict)


_HITS = (
    select(
        TrackletModel.id,
        ProcedureModel.uid,
        TrackletModel.key,
        TrackletModel.start_frame,
        TrackletModel.end_frame,
        TrackletModel.n_frames,
        TrackletModel.identity_label,
        EntityModel.entity,
        PredictionModel.task,
        PredictionModel.label,
        PredictionModel.probability,
        PredictionModel.probe_version,
    )
    .join(ProcedureModel, TrackletModel.procedure_id == ProcedureModel.id)
    .outerjoin(EntityModel, EntityModel.tracklet_id == TrackletModel.id)
    .outerjoin(PredictionModel, PredictionModel.tracklet_id == TrackletModel.id)
    .where(TrackletModel.id.in_(bindparam("ids", expanding=True)))
)
"""Built once (building a statement costs more than running it on a small table)."""

_TRACKLET = (
    select(
        TrackletModel.id,
        ProcedureModel.uid,
        TrackletModel.key,
        TrackletModel.identity_label,
        TrackletModel.start_frame,
        TrackletModel.end_frame,
        TrackletModel.n_frames,
        TrackletModel.boxes_json,
        TrackletModel.thumbnail_path,
        TrackletModel.embedding,
        TrackletModel.embedding_dim,
        TrackletModel.encoder_version,
        TrackletModel.size_mm,
        TrackletModel.histology,
    )
    .join(ProcedureModel, TrackletModel.procedure_id == ProcedureModel.id)
    .where(TrackletModel.id == bindparam("id"))
)


def query_tracklet(engine: Engine, tracklet_id: int) -> TrackletRecord:
    """The stored tracklet a query by id names (what ``Store.get_tracklet`` returns), in
    one prepared query on a plain connection.

    Raises:
        TrackletNotFoundError: no tracklet has this id.
    """
    with engine.connect() as conn:
        row = conn.execute(_TRACKLET, {"id": int(tracklet_id)}).first()
    if row is None:
        raise TrackletNotFoundError(f"no tracklet with id {tracklet_id}")
    tid = int(row[0])
    return TrackletRecord(
        id=tid,
        procedure_uid=str(row[1]),
        key=str(row[2]),
        identity_label=row[3],
        start_frame=int(row[4]),
        end_frame=int(row[5]),
        n_frames=int(row[6]),
        boxes=json.loads(row[7] or "{}"),
        thumbnail_path=row[8],
        embedding=embedding_from_bytes(row[9], int(row[10]), tid),
        encoder_version=str(row[11]),
        size_mm=row[12],
        histology=row[13],
    )


def hit_records(engine: Engine, ids: Iterable[int]) -> dict[int, HitRecord]:
    """The stored facts and predictions of these tracklets, one query per 900 ids."""
    wanted = sorted({int(i) for i in ids})
    out: dict[int, HitRecord] = {}
    if not wanted:
        return out
    with engine.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            for row in conn.execute(_HITS, {"ids": wanted[start : start + _CHUNK]}):
                tid = int(row[0])
                hit = out.get(tid)
                if hit is None:
                    hit = out[tid] = HitRecord(
                        tid,
                        str(row[1]),
                        str(row[2]),
                        int(row[3]),
                        int(row[4]),
                        int(row[5]),
                        row[6],
                        None if row[7] is None else int(row[7]),
                    )
                if row[8] is not None:
                    hit.predictions[str(row[8])] = PredictionRow(
                        str(row[8]), str(row[9]), float(row[10]), str(row[11])
                    )
    return out
