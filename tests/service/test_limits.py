"""Limits before work (issue 11): the body limit while reading, the pixel limit from the
image header, integer ranges, control characters, list caps.

Each of these was a 500 or an unbounded read before: ids >= 2**63 (SQLite
OverflowError), a NUL in a job root, a 40000x40000 PNG (OpenCV's pixel limit), a
body of any size parsed before the 422.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.service_api import DIM, MeanColourEncoder, Setup, assert_error, frame, started

from polypindex.model.data.image_header import check_pixels, image_size
from polypindex.service.limits import BodyLimitMiddleware, max_image_b64_chars
from polypindex.service.schemas import MAX_EXCLUDED_IDS, MAX_PROCEDURE_UIDS

BIG = 2**63


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring ``width`` x ``height`` RGB, one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def b64_frame(data: bytes) -> dict[str, Any]:
    return {"image_b64": base64.b64encode(data).decode(), "bbox": [0, 0, 4, 4]}


@pytest.fixture(scope="module")
def limited(setup: Setup) -> Iterator[TestClient]:
    settings = setup.settings.model_copy(
        update={"max_body_bytes": 200_000, "max_image_pixels": 10_000}
    )
    with started(settings, MeanColourEncoder()) as c:
        yield c


# -- integer ranges: ids are positive 64-bit ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/search", {"query": {"tracklet_id": BIG}}, "body.query.tracklet_id"),
        ("/search", {"query": {"tracklet_id": 0}}, "body.query.tracklet_id"),
        (
            "/search",
            {"query": {"embedding": [1.0] * DIM}, "exclude_tracklet_ids": [BIG]},
            "body.exclude_tracklet_ids.0",
        ),
        ("/reid", {"a": {"tracklet_id": BIG}, "b": {"tracklet_id": 1}}, "body.a.tracklet_id"),
        ("/predict", {"tracklet": {"tracklet_id": 2**64}}, "body.tracklet.tracklet_id"),
    ],
)
def test_ids_out_of_64_bit_range_are_422(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    assert_error(client.post(path, json=body), 422, "validation_error", field)


def test_largest_id_is_a_404_not_a_500(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": BIG - 1}})
    assert_error(r, 404, "tracklet_not_found")


# -- control characters -------------------------------------------------------------------


def test_nul_in_strings_is_422_naming_the_field(client: TestClient) -> None:
    r = client.post(
        "/search", json={"query": {"embedding": [1.0] * DIM}, "procedure_uids": ["a\x00b"]}
    )
    assert_error(r, 422, "validation_error", "body.procedure_uids.0")
    # a NUL in a POST /procedures root, in GET /jobs/{id}: tests/service/test_confinement.py
    assert_error(client.delete("/procedures/a%00b"), 422, "validation_error", "path.uid")


# -- list caps ----------------------------------------------------------------------------


def test_list_caps(client: TestClient) -> None:
    query = {"embedding": [1.0] * DIM}
    r = client.post(
        "/search",
        json={"query": query, "procedure_uids": [f"u{i}" for i in range(MAX_PROCEDURE_UIDS + 1)]},
    )
    assert_error(r, 422, "validation_error", "body.procedure_uids", str(MAX_PROCEDURE_UIDS))
    r = client.post(
        "/search", json={"query": query, "exclude_tracklet_ids": [1] * (MAX_EXCLUDED_IDS + 1)}
    )
    assert_error(r, 422, "validation_error", "body.exclude_tracklet_ids")
    r = client.post("/predict", json={"tracklet": query, "tasks": ["size", "histology", "size"]})
    assert_error(r, 422, "validation_error", "body.tasks")
    r = client.post("/search", json={"query": {"frames": [frame()] * 9}})  # MAX_FRAMES = 8
    assert_error(r, 422, "validation_error", "body.query.frames", "at most 8")


@pytest.mark.parametrize(
    "bbox", [[0, 0, 0, 4], [0, 0, 4, -1], [1e300, 0, 4, 4], [0, 0, 4], [0, 0, 4, 4, 4]]
)
def test_bad_boxes_are_422(client: TestClient, bbox: list[float]) -> None:
    r = client.post("/search", json={"query": {"frames": [{**frame(), "bbox": bbox}]}})
    assert_error(r, 422, "validation_error", "body.query.frames.0.bbox")


# -- the body limit -----------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_naming_it(limited: TestClient) -> None:
    body = b'{"query": {"embedding": [' + b"1.0, " * 60_000 + b"1.0]}}"
    r = limited.post("/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large", "200000 bytes", "max_body_bytes")
    r = limited.post("/search", json={"query": {"embedding": [1.0] * DIM}})
    assert r.status_code == 200, r.text


class EchoApp:
    """An ASGI app that reads the whole body and answers 200."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run_asgi(
    limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, int, bool]:
    """Send ``chunks`` through the middleware: (status sent, chunks read, app called)."""
    app, read, sent = EchoApp(), 0, []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers}
    asyncio.run(BodyLimitMiddleware(app, limit)(scope, receive, send))  # type: ignore[arg-type]
    return int(sent[0]["status"]), read, app.called


def test_the_body_limit_stops_reading_at_the_limit() -> None:
    chunks = [b"x" * 1000] * 100  # 100 kB in 1 kB chunks, no Content-Length (chunked)
    # stopped at the first chunk past 5000 bytes, not at the end; the app never runs
    assert run_asgi(5_000, chunks, []) == (413, 6, False)
    # refused from the Content-Length header, before a byte is read
    assert run_asgi(5_000, chunks, [(b"content-length", b"100000")]) == (413, 0, False)
    # within the limit: replayed whole to the app
    assert run_asgi(200_000, chunks, []) == (200, 100, True)


# -- the pixel limit, from the header -----------------------------------------------------


def test_image_header_sizes() -> None:
    assert image_size(png_header_only(40000, 30000)) == (40000, 30000)
    jpeg = base64.b64decode(frame()["image_b64"])  # a PNG, in fact
    assert image_size(jpeg) == (24, 24)
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    assert ok and image_size(data.tobytes()) == (50, 30)
    ok, data = cv2.imencode(".bmp", np.zeros((7, 9, 3), np.uint8))
    assert ok and image_size(data.tobytes()) == (9, 7)
    assert image_size(b"GIF89a....") is None
    check_pixels(png_header_only(100, 100), 10_000)  # at the limit: fine


def test_a_40000_by_40000_png_is_refused_not_a_500(client: TestClient) -> None:
    r = client.post(
        "/search", json={"query": {"frames": [b64_frame(png_header_only(40000, 40000))]}}
    )
    assert_error(r, 413, "image_too_large", "body.query.frames.0.image_b64", "max_image_pixels")


def test_the_pixel_limit_is_the_setting(limited: TestClient) -> None:
    small = b64_frame(png_header_only(100, 100))  # 10 000 pixels: at the limit
    r = limited.post("/reid", json={"a": {"frames": [small]}, "b": {"tracklet_id": 1}})
    assert r.status_code != 413, r.text
    r = limited.post(
        "/reid",
        json={"a": {"tracklet_id": 1}, "b": {"frames": [b64_frame(png_header_only(101, 100))]}},
    )
    assert_error(r, 413, "image_too_large", "body.b.frames.0.image_b64", "10000 pixels")


def test_max_b64_chars_holds_the_base64_of_max_bytes() -> None:
    for n in (1, 2, 3, 1000, 20_000, 8_000_000):
        encoded = base64.encodebytes(b"\xff" * n)  # wrapped every 76 characters
        assert len(encoded) <= max_image_b64_chars(n)
        assert len(base64.b64encode(b"\xff" * (n + 4))) > 4 * -(-n // 3)


def test_opencv_pixel_limit_is_an_image_read_error() -> None:
    """Without the service's limit (indexing), OpenCV's own limit (2^30 pixels) was an
    uncaught ``cv2.error``; now an ImageReadError naming the problem."""
    from polypindex.model.core.errors import ImageReadError
    from polypindex.model.data.preprocess import decode_image

    with pytest.raises(ImageReadError):
        decode_image(png_header_only(40000, 40000))
    with pytest.raises(ImageReadError, match="max_image_pixels"):
        decode_image(png_header_only(40000, 40000), max_pixels=25_000_000)
