"""The store's side of polyp entities (:mod:`indexer.grouping`): the ``tracklet_entities``
rows of a procedure, written in one transaction, and read per tracklet or per procedure.

Part of the store layer (docs/architecture.md#the-store): the queries run in the
store's sessions; callers get plain values and detached rows, never a session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select

from polypindex.indexer.store import Store
from polypindex.indexer.tables import EntityModel, TrackletModel

_IN_CHUNK = 500  # ids per IN (...) list


def procedure_tracklet_ids(store: Store, procedure_id: int) -> list[int]:
    """The tracklet ids of one stored procedure (its row id), increasing."""
    query = (
        select(TrackletModel.id)
        .where(TrackletModel.procedure_id == procedure_id)
        .order_by(TrackletModel.id)
    )
    with store.sessions() as session:
        return list(session.scalars(query))


def replace_entities(
    store: Store,
    procedure_id: int,
    encoder_version: str,
    labels: Mapping[int, int],
    *,
    method: str,
    cut: float,
    calibrated: bool,
) -> None:
    """Replace a procedure's entity rows by ``labels`` (``{tracklet id: entity}``), in one
    transaction."""
    grouping = {"method": method, "cut": cut, "calibrated": calibrated}  # the same on every row
    with store.sessions.begin() as session:
        session.execute(delete(EntityModel).where(EntityModel.procedure_id == procedure_id))
        session.add_all(
            EntityModel(
                tracklet_id=tid,
                procedure_id=procedure_id,
                encoder_version=encoder_version,
                entity=entity,
                **grouping,
            )
            for tid, entity in sorted(labels.items())
        )


def entity_ids(store: Store, tracklet_ids: Iterable[int]) -> dict[int, int]:
    """``{tracklet id: entity number}`` for the given tracklets that have been grouped."""
    wanted = sorted({int(i) for i in tracklet_ids})
    out: dict[int, int] = {}
    with store.sessions() as session:
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            for tid, entity in session.execute(
                select(EntityModel.tracklet_id, EntityModel.entity).where(
                    EntityModel.tracklet_id.in_(chunk)
                )
            ):
                out[int(tid)] = int(entity)
    return out


def procedure_entity_rows(store: Store, procedure_id: int) -> list[EntityModel]:
    """A procedure's entity rows (detached: read them, do not write them)."""
    query = select(EntityModel).where(EntityModel.procedure_id == procedure_id)
    with store.sessions() as session:
        return list(session.scalars(query))
