"""What the read endpoints answer (docs/viewer.md, docs/grouping.md): a page of
procedures, a procedure's timeline and its polyp entities, one tracklet, its thumbnail
and frame strip, and a 2-D map of the index. Nothing here writes or embeds.

The JPEG reads give a :class:`Jpeg`: its ETag, known from the stored rows and the
file's stat alone, and how to make the image, so the router answers a client holding
that ETag (304) without reading or drawing anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polypindex.indexer import grouping, reads, strips
from polypindex.indexer.store import Store
from polypindex.indexer.tables import ProcedureRecord
from polypindex.model.core.errors import IndexNotReadyError, InvalidInputError
from polypindex.service.read_schemas import (
    IndexMapResponse,
    MapPoint,
    PolypEntity,
    ProcedureDetail,
    ProcedureItem,
    ProcedureList,
    ProcedurePolypsResponse,
    TimelineTracklet,
    TrackletDetail,
    boxes_summary,
)
from polypindex.service.resources import Encoder
from polypindex.service.schemas import predictions_by_task
from polypindex.service.settings import Settings

__all__ = [
    "Jpeg",
    "index_map_points",
    "polyps_of_procedure",
    "procedure_page",
    "procedure_timeline",
    "strip_jpeg",
    "thumbnail_jpeg",
    "tracklet_detail",
]


@dataclass(frozen=True)
class Jpeg:
    """A JPEG answer: its ETag, and ``make()`` → the image bytes and any extra headers."""

    etag: str
    make: Callable[[], tuple[bytes, dict[str, str]]]


def _etag(source: str) -> str:
    return '"' + hashlib.sha1(source.encode()).hexdigest()[:20] + '"'


def _procedure_item(p: ProcedureRecord) -> ProcedureItem:
    return ProcedureItem(
        uid=p.uid,
        dataset_id=p.dataset_id,
        encoder_version=p.encoder_version,
        n_tracklets=p.n_tracklets,
        indexed_at=reads.as_utc(p.created_at),
    )


def procedure_page(
    store: Store, where: reads.ProcedureFilter, limit: int, offset: int
) -> ProcedureList:
    """The procedures ``where`` keeps, ``limit`` of them from ``offset`` (by UID, then
    encoder version); ``next_offset`` is ``None`` on the last page."""
    page = reads.list_procedures(store, where, limit, offset)
    end = offset + len(page.procedures)
    return ProcedureList(
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=end if end < page.total else None,
        procedures=[_procedure_item(p) for p in page.procedures],
    )


def procedure_timeline(store: Store, uid: str, encoder_version: str | None) -> ProcedureDetail:
    """The procedure (its newest generation unless ``encoder_version``) and its tracklets
    by start frame; ProcedureNotFoundError (404) for an unknown UID."""
    procedure, tracklets = reads.procedure_tracklets(store, uid, encoder_version)
    return ProcedureDetail(
        procedure=_procedure_item(procedure),
        first_frame=min((t.start_frame for t in tracklets), default=None),
        last_frame=max((t.end_frame for t in tracklets), default=None),
        tracklets=[
            TimelineTracklet(
                tracklet_id=t.id,
                key=t.key,
                start_frame=t.start_frame,
                end_frame=t.end_frame,
                n_frames=t.n_frames,
                identity_label=t.identity_label,
                thumbnail_url=f"/tracklets/{t.id}/thumbnail" if t.has_thumbnail else None,
                predictions=predictions_by_task(t.predictions),
                entity_id=t.entity_id,
            )
            for t in tracklets
        ],
    )


def tracklet_detail(store: Store, tracklet_id: int) -> TrackletDetail:
    """One stored tracklet with its procedure's dataset and its stored predictions;
    TrackletNotFoundError (404) for an unknown id."""
    record = store.get_tracklet(tracklet_id)
    procedure = reads.tracklet_procedure(store, tracklet_id)
    predictions = store.predictions_for([tracklet_id]).get(tracklet_id, {})
    return TrackletDetail(
        tracklet_id=record.id,
        procedure_uid=record.procedure_uid,
        dataset_id=procedure.dataset_id,
        key=record.key,
        encoder_version=record.encoder_version,
        start_frame=record.start_frame,
        end_frame=record.end_frame,
        n_frames=record.n_frames,
        identity_label=record.identity_label,
        size_mm=record.size_mm,
        histology=record.histology,
        boxes=boxes_summary(record.boxes),
        predictions=predictions_by_task(predictions),
        thumbnail_url=f"/tracklets/{record.id}/thumbnail" if record.thumbnail_path else None,
        strip_url=f"/tracklets/{record.id}/strip",
    )


def thumbnail_jpeg(store: Store, index_dir: Path, tracklet_id: int) -> Jpeg:
    """The crop written at indexing time, from under ``index_dir``; TrackletNotFoundError
    or ThumbnailNotFoundError (404) when there is none."""
    record = store.get_tracklet(tracklet_id)
    path = reads.thumbnail_file(index_dir, record.id, record.thumbnail_path)
    stat = path.stat()
    etag = _etag(f"thumb:{record.id}:{stat.st_size}:{stat.st_mtime_ns}")
    return Jpeg(etag, lambda: (path.read_bytes(), {}))


def strip_jpeg(
    store: Store, settings: Settings, tracklet_id: int, frames: int, height: int
) -> Jpeg:
    """Up to ``frames`` of the tracklet's frames, ``height`` pixels high, each with its box,
    read again from the indexed source inside the data roots (header ``X-Boxes``:
    ``annotated`` or ``interpolated``); the image is made only by ``make()``."""
    record = store.get_tracklet(tracklet_id)
    procedure = reads.tracklet_procedure(store, tracklet_id)
    etag = _etag(f"strip:{record.id}:{frames}:{height}:{procedure.created_at.isoformat()}")

    def make() -> tuple[bytes, dict[str, str]]:
        data, exact = strips.tracklet_strip(
            record, procedure, settings.data_roots, frames, height, settings.home
        )
        return data, {"X-Boxes": "annotated" if exact else "interpolated"}

    return Jpeg(etag, make)


def index_map_points(
    store: Store, limit: int, method: str, encoder_version: str | None, served: Encoder | None
) -> IndexMapResponse:
    """At most ``limit`` vectors of ``encoder_version`` (default: the ``served`` encoder's)
    projected to 2-D by ``method``.

    Raises:
        InvalidInputError: ``umap`` without the optional umap-learn package (422).
        IndexNotReadyError: no ``encoder_version`` and no encoder loaded (503).
    """
    methods = ["pca", "umap"] if reads.umap_available() else ["pca"]
    if method not in methods:
        raise InvalidInputError(
            "method umap needs the optional umap-learn package: pip install 'polypindex[umap]'"
        )
    if encoder_version is not None:
        version = encoder_version
    elif served is not None:
        version = str(served.version)
    else:
        raise IndexNotReadyError("the encoder model is not loaded; pass encoder_version")
    result = reads.index_map(store, version, limit, method)
    return IndexMapResponse(
        encoder_version=version,
        method=result.method,
        methods=methods,
        total=result.total,
        sampled=len(result.ids),
        points=[
            MapPoint(
                tracklet_id=int(tid),
                x=float(x),
                y=float(y),
                procedure_uid=result.procedure_of.get(int(tid), ""),
                predictions={t: p.label for t, p in result.predictions.get(int(tid), {}).items()},
                entity_id=result.entities.get(int(tid)),
            )
            for tid, (x, y) in zip(result.ids.tolist(), result.xy.tolist(), strict=True)
        ],
    )


def polyps_of_procedure(
    store: Store, uid: str, encoder_version: str | None
) -> ProcedurePolypsResponse:
    """The procedure's polyp entities (its newest generation unless ``encoder_version``);
    ProcedureNotFoundError (404) for an unknown UID."""
    found = grouping.procedure_polyps(store, uid, encoder_version)
    return ProcedurePolypsResponse(
        uid=found.uid,
        encoder_version=found.encoder_version,
        grouped=found.grouped,
        n_polyps=len(found.entities),
        method=found.method,
        cut=found.cut,
        calibrated=found.calibrated,
        entities=[PolypEntity(**e.__dict__) for e in found.entities],
        ungrouped_tracklet_ids=found.ungrouped_tracklet_ids,
    )
