"""``GET /export``: an index generation as the zip of an export bundle (Parquet: embeddings,
tracklets, predictions, polyp entities; docs/inputs.md#export-and-import), for another
site's ``polypindex import-index``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Query, Response
from starlette.concurrency import run_in_threadpool

from polypindex.indexer.exchange import export_bundle, zip_bundle
from polypindex.indexer.store import Store
from polypindex.service.deps import EncoderDep, StoreDep
from polypindex.service.errors import error_responses
from polypindex.service.routers.documented import documented_router

router = documented_router("export")
ZIP: dict[str, Any] = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}


def _bundle(store: Store, version: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        export_bundle(store, version, Path(folder) / "bundle")
        return zip_bundle(Path(folder) / "bundle")


@router.get(
    "/export",
    summary="Download an index generation as Parquet",
    operation_id="export_index",
    response_class=Response,
    responses={
        **error_responses(404, 422, 500, 503),
        200: {"content": ZIP, "description": "The bundle as a zip."},
    },
)
async def export_index(
    store: StoreDep,
    encoder: EncoderDep,
    encoder_version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="The encoder version to export (default: the one this service serves).",
        ),
    ] = None,
) -> Response:
    """The stored rows of one encoder version as an export bundle (a zip of `manifest.json`,
    the Parquet files and `entities.json`), built in memory from the store; 404 when the
    store holds nothing of that version. No thumbnails and no frames are included."""
    version = encoder_version or encoder.version
    data = await run_in_threadpool(_bundle, store, version)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="polypindex-export.zip"'},
    )
