"""The viewer's read endpoints (docs/viewer.md): procedures, a procedure's timeline, one
tracklet, its thumbnail and frame strip (JPEG, cache headers), and a 2-D map of the
index. Nothing here writes or embeds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request, Response

from polypindex.indexer import reads, strips
from polypindex.indexer.tables import PredictionRow, ProcedureRecord
from polypindex.model.core.errors import IndexNotReadyError, InvalidInputError
from polypindex.service.deps import SettingsDep, StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.read_schemas import (
    IndexMapResponse,
    MapPoint,
    ProcedureDetail,
    ProcedureItem,
    ProcedureList,
    TimelineTracklet,
    TrackletDetail,
    boxes_summary,
)
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import HistologyLabel, Prediction, SizeLabel

router = documented_router("viewer")

MAX_PAGE = 500
MAX_MAP_POINTS = 5000
MAX_STRIP_FRAMES = 12
# Printable text only: no control characters in ids, UIDs or filter values.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
# Thumbnails and strips of a tracklet id never change (ids are never reused; re-indexing
# makes new ids), so clients may keep them; "private": they may show patient data.
CACHE_CONTROL = "private, max-age=86400"

TrackletId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An indexed tracklet's id.")]


def _text(description: str) -> Any:
    """A short printable text query parameter."""
    return Query(min_length=1, max_length=255, pattern=NO_CONTROL, description=description)


def _prediction(p: PredictionRow) -> Prediction:
    return Prediction(label=p.label, probability=p.probability, probe_version=p.probe_version)


def _procedure_item(p: ProcedureRecord) -> ProcedureItem:
    return ProcedureItem(
        uid=p.uid,
        dataset_id=p.dataset_id,
        encoder_version=p.encoder_version,
        n_tracklets=p.n_tracklets,
        indexed_at=reads.as_utc(p.created_at),
    )


def _served_version(request: Request, given: str | None) -> str:
    if given is not None:
        return given
    encoder = getattr(request.app.state, "encoder", None)
    if encoder is None:
        raise IndexNotReadyError("the encoder model is not loaded; pass encoder_version")
    return str(encoder.version)


def _etag(source: str) -> str:
    return '"' + hashlib.sha1(source.encode()).hexdigest()[:20] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    return etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}


def _jpeg(
    request: Request, make: Callable[[], tuple[bytes, dict[str, str]]], etag: str
) -> Response:
    """304 when the client holds ``etag`` (nothing made), else ``make()``'s JPEG and headers."""
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    data, extra = make()
    return Response(content=data, media_type="image/jpeg", headers={**headers, **extra})


@router.get(
    "/procedures",
    summary="Indexed procedures, one page",
    responses=error_responses(422, 500, 503),
)
def list_procedures(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Procedures skipped.")] = 0,
    dataset: Annotated[str | None, _text("Only this dataset.")] = None,
    indexed_after: Annotated[datetime | None, Query(description="Indexed at or after.")] = None,
    indexed_before: Annotated[datetime | None, Query(description="Indexed before.")] = None,
    predicted_size: Annotated[SizeLabel | None, Query()] = None,
    predicted_histology: Annotated[HistologyLabel | None, Query()] = None,
    encoder_version: Annotated[str | None, _text("Only this encoder version.")] = None,
) -> ProcedureList:
    """Ordered by UID, then encoder version (one row per UID and encoder version).
    `dataset`: only that dataset; `indexed_after` / `indexed_before` (ISO 8601): only
    procedures indexed in that window; `predicted_size` / `predicted_histology`: only
    procedures with at least one tracklet whose stored prediction has that label;
    `encoder_version`: only that generation. `next_offset` is null on the last page.
    """
    predicted = tuple(
        (task, label)
        for task, label in (("size", predicted_size), ("histology", predicted_histology))
        if label is not None
    )
    where = reads.ProcedureFilter(
        dataset_id=dataset,
        indexed_after=indexed_after,
        indexed_before=indexed_before,
        predicted=predicted,
        encoder_version=encoder_version,
    )
    page = reads.list_procedures(store, where, limit, offset)
    end = offset + len(page.procedures)
    return ProcedureList(
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=end if end < page.total else None,
        procedures=[_procedure_item(p) for p in page.procedures],
    )


@router.get(
    "/procedures/{uid:path}",
    summary="A procedure's tracklets on a timeline",
    responses=error_responses(404, 422, 500, 503),
)
def get_procedure(
    uid: Annotated[str, Path(min_length=1, max_length=255, pattern=NO_CONTROL)],
    store: StoreDep,
    encoder_version: Annotated[str | None, _text("Only this encoder version.")] = None,
) -> ProcedureDetail:
    """The procedure (its newest generation unless `encoder_version`) and its tracklets
    by start frame, with frame ranges and stored predictions. Unknown UID: 404
    `procedure_not_found`.
    """
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
                predictions={task: _prediction(p) for task, p in t.predictions.items()},
                entity_id=t.entity_id,
            )
            for t in tracklets
        ],
    )


@router.get(
    "/tracklets/{tracklet_id}",
    summary="One tracklet: metadata, boxes, predictions",
    responses=error_responses(404, 422, 500, 503),
)
def get_tracklet(tracklet_id: TrackletId, store: StoreDep) -> TrackletDetail:
    """Unknown id: 404 `tracklet_not_found`."""
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
        predictions={task: _prediction(p) for task, p in predictions.items()},
        thumbnail_url=f"/tracklets/{record.id}/thumbnail" if record.thumbnail_path else None,
        strip_url=f"/tracklets/{record.id}/strip",
    )


_JPEG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "A JPEG image."},
    304: {"description": "Not modified (`If-None-Match` names the current `ETag`)."},
}


@router.get(
    "/tracklets/{tracklet_id}/thumbnail",
    summary="A tracklet's thumbnail (JPEG)",
    response_class=Response,
    responses={**_JPEG, **error_responses(404, 422, 500, 503)},
)
def get_thumbnail(
    tracklet_id: TrackletId, request: Request, store: StoreDep, settings: SettingsDep
) -> Response:
    """The crop written at indexing time (the middle embedded frame), from under the index
    folder. `ETag` and `Cache-Control` headers; `If-None-Match` answers 304. Unknown id:
    404 `tracklet_not_found`; none written or gone: 404 `thumbnail_not_found`.
    """
    record = store.get_tracklet(tracklet_id)
    path = reads.thumbnail_file(settings.index_dir, record.id, record.thumbnail_path)
    stat = path.stat()
    etag = _etag(f"thumb:{record.id}:{stat.st_size}:{stat.st_mtime_ns}")
    return _jpeg(request, lambda: (path.read_bytes(), {}), etag)


@router.get(
    "/tracklets/{tracklet_id}/strip",
    summary="A strip of a tracklet's frames with its box drawn (JPEG)",
    response_class=Response,
    responses={**_JPEG, **error_responses(404, 409, 422, 500, 503)},
)
def get_strip(
    tracklet_id: TrackletId,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    frames: Annotated[int, Query(ge=1, le=MAX_STRIP_FRAMES, description="Frames shown.")] = 5,
    height: Annotated[int, Query(ge=32, le=360, description="Pixel height.")] = 120,
) -> Response:
    """Up to `frames` of the tracklet's frames, evenly spread, side by side, each with the
    polyp's box: the annotated box (COCO input) or one interpolated between the stored first
    and last boxes (frames folder; header `X-Boxes: interpolated`). The frames are read
    again from the indexed source inside the data roots; when that is a video or the files
    are gone: 409 `frames_unavailable`. Unknown id: 404 `tracklet_not_found`.
    """
    record = store.get_tracklet(tracklet_id)
    procedure = reads.tracklet_procedure(store, tracklet_id)
    etag = _etag(f"strip:{record.id}:{frames}:{height}:{procedure.created_at.isoformat()}")

    def make() -> tuple[bytes, dict[str, str]]:
        data, exact = strips.tracklet_strip(
            record, procedure, settings.data_roots, frames, height, settings.home
        )
        return data, {"X-Boxes": "annotated" if exact else "interpolated"}

    return _jpeg(request, make, etag)


@router.get(
    "/index/map",
    summary="2-D map of a sample of the index vectors",
    responses=error_responses(422, 500, 503),
)
def index_map(
    request: Request,
    store: StoreDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_MAP_POINTS, description="Most points, evenly spread by id.")
    ] = 2000,
    method: Annotated[Literal["pca", "umap"], Query(description="Projection.")] = "pca",
    encoder_version: Annotated[str | None, _text("Only this encoder version.")] = None,
) -> IndexMapResponse:
    """Each sampled vector of the served encoder version (or `encoder_version`) projected
    to 2-D (`pca`: numpy, the default; `umap`: needs the optional `umap-learn` package,
    `pip install 'polypindex[umap]'`), with its procedure and predicted labels. Cached
    until the store's rows change.
    """
    methods = ["pca", "umap"] if reads.umap_available() else ["pca"]
    if method not in methods:
        raise InvalidInputError(
            "method umap needs the optional umap-learn package: pip install 'polypindex[umap]'"
        )
    version = _served_version(request, encoder_version)
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
