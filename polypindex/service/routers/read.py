"""The viewer's read endpoints (docs/viewer.md): procedures, a procedure's timeline, one
tracklet, its thumbnail and frame strip (JPEG, cache headers), and a 2-D map of the
index. Nothing here writes or embeds."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query, Request, Response
from pydantic import BeforeValidator

from polypindex.indexer.reads import MAP_METHODS, ProcedureFilter, umap_available
from polypindex.service.deps import OptionalEncoderDep, SettingsDep, StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.read import (
    Jpeg,
    index_map_points,
    procedure_page,
    procedure_timeline,
    strip_jpeg,
    thumbnail_jpeg,
    tracklet_detail,
)
from polypindex.service.read_schemas import (
    IndexMapResponse,
    ProcedureDetail,
    ProcedureList,
    TrackletDetail,
)
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import HistologyLabel, SizeLabel, predicted_labels

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
MapLimit = Annotated[
    int, Query(ge=1, le=MAX_MAP_POINTS, description="Most points, evenly spread by id.")
]
# The projections this installation can make (umap needs the optional umap-learn).
MAP_METHODS_HERE = MAP_METHODS if umap_available() else ("pca",)
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def _iso_only(value: Any) -> Any:
    """A date-time query value must be ISO 8601, as the schema's ``format`` says: a bare
    number (pydantic would read it as a Unix time) is refused."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("an ISO 8601 date-time (e.g. 2026-12-01T09:00:00Z), not a number")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
# What a read without a path parameter can answer besides 200.
LIST_ERRORS = error_responses(422, 500, 503)


def _text(description: str) -> Any:
    """A short printable text query parameter."""
    return Query(min_length=1, max_length=255, pattern=NO_CONTROL, description=description)


def _not_modified(request: Request, etag: str) -> bool:
    return etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}


def _jpeg(request: Request, jpeg: Jpeg) -> Response:
    """304 when the client holds its ETag (nothing made), else the JPEG and its headers."""
    headers = {"ETag": jpeg.etag, "Cache-Control": CACHE_CONTROL}
    if _not_modified(request, jpeg.etag):
        return Response(status_code=304, headers=headers)
    data, extra = jpeg.make()
    return Response(content=data, media_type="image/jpeg", headers={**headers, **extra})


@router.get("/procedures", summary="Indexed procedures, one page", responses=LIST_ERRORS)
def list_procedures(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Procedures skipped.")] = 0,
    dataset: Annotated[str | None, _text("Only this dataset.")] = None,
    indexed_after: Annotated[IsoDateTime | None, Query(description="Indexed at or after.")] = None,
    indexed_before: Annotated[IsoDateTime | None, Query(description="Indexed before.")] = None,
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
    where = ProcedureFilter(
        dataset_id=dataset,
        indexed_after=indexed_after,
        indexed_before=indexed_before,
        predicted=predicted_labels(predicted_size, predicted_histology),
        encoder_version=encoder_version,
    )
    return procedure_page(store, where, limit, offset)


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
    return procedure_timeline(store, uid, encoder_version)


@router.get(
    "/tracklets/{tracklet_id}",
    summary="One tracklet: metadata, boxes, predictions",
    responses=error_responses(404, 422, 500, 503),
)
def get_tracklet(tracklet_id: TrackletId, store: StoreDep) -> TrackletDetail:
    """Unknown id: 404 `tracklet_not_found`."""
    return tracklet_detail(store, tracklet_id)


_JPEG: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A JPEG image.",
    },
    304: {"description": "Not modified (`If-None-Match` names the current `ETag`)."},
}


@router.get(
    "/tracklets/{tracklet_id}/thumbnail",
    operation_id="get_tracklet_thumbnail",
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
    return _jpeg(request, thumbnail_jpeg(store, settings.index_dir, tracklet_id))


@router.get(
    "/tracklets/{tracklet_id}/strip",
    operation_id="get_tracklet_strip",
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
    return _jpeg(request, strip_jpeg(store, settings, tracklet_id, frames, height))


@router.get("/index/map", summary="2-D map of a sample of the index vectors", responses=LIST_ERRORS)
def index_map(
    store: StoreDep,
    encoder: OptionalEncoderDep,
    limit: MapLimit = 2000,
    method: Annotated[
        Literal["pca", "umap"],
        # the schema lists umap only where umap-learn is installed, as the server allows
        Query(description="Projection.", json_schema_extra={"enum": list(MAP_METHODS_HERE)}),
    ] = "pca",
    encoder_version: Annotated[str | None, _text("Only this encoder version.")] = None,
) -> IndexMapResponse:
    """Each sampled vector of the served encoder version (or `encoder_version`) projected
    to 2-D (`pca`: numpy, the default; `umap`: needs the optional `umap-learn` package,
    `pip install 'polypindex[umap]'`), with its procedure and predicted labels. Cached
    until the store's rows change.
    """
    return index_map_points(store, limit, method, encoder_version, encoder)
