"""Memory bounded before work (issue 24): the key before the body, the body's shape
before its parse, the pixel limit of every query frame from its header, frames decoded
one at a time and cropped (the memory itself: test_memory_rss.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import bombs
from helpers.auth import add_key, bearer, keys_settings
from helpers.indexing import write_csv, write_frames
from helpers.service_api import MeanColourEncoder, Setup, assert_error, frame, started

from polypindex.indexer import strips
from polypindex.indexer.sources import frames_source
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.image_header import ImageTooLargeError
from polypindex.model.data.preprocess import crop_frame, decode_image
from polypindex.service.backend import decode_frames
from polypindex.service.limits import MAX_JSON_DEPTH, MAX_JSON_VALUES, json_shape_error
from polypindex.service.schemas import FrameInput


@pytest.fixture(scope="module")
def tokens(setup: Setup) -> dict[str, str]:
    return {"read": add_key(setup.settings, "memory-reader", "read")}


@pytest.fixture(scope="module")
def keyed(setup: Setup, tokens: dict[str, str]) -> Iterator[TestClient]:
    settings = keys_settings(setup.settings, max_image_bytes=2_000_000)
    with started(settings, MeanColourEncoder()) as client:
        yield client


def test_a_keyless_body_is_refused_before_it_is_parsed(keyed: TestClient) -> None:
    # not JSON at all: a 401, not the 422 a parse would give
    r = keyed.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    message = assert_error(r, 401, "unauthorized", "scope 'read'")
    assert r.headers["www-authenticate"] == 'Bearer realm="polypindex"'
    assert r.headers["connection"] == "close"  # the body is left unread
    # the same answer as the dependency gives for a body-less request
    assert message == keyed.get("/jobs").json()["error"]["message"].replace("'write'", "'read'")
    bad = keyed.post("/reid", content=b"[" * 10_000, headers=bearer("pk_nope"))
    assert_error(bad, 401, "unauthorized", "not valid")
    assert bad.headers["www-authenticate"].endswith('error="invalid_token"')


def test_a_key_of_too_small_a_scope_is_refused_before_the_body(
    keyed: TestClient, tokens: dict[str, str]
) -> None:
    r = keyed.post("/procedures", content=b"{not json", headers=bearer(tokens["read"]))
    assert_error(r, 403, "forbidden", "needs 'write'")
    assert 'scope="write"' in r.headers["www-authenticate"]


def test_a_valid_key_goes_through_once_and_open_paths_stay_open(
    keyed: TestClient, tokens: dict[str, str]
) -> None:
    r = keyed.post("/search", json={"query": {"frames": [frame()]}}, headers=bearer(tokens["read"]))
    assert r.status_code == 200, r.text
    r = keyed.post("/search", content=b"{not json", headers=bearer(tokens["read"]))
    assert_error(r, 422, "validation_error")  # a key, then the parse
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_json_shape_is_counted_on_the_raw_bytes() -> None:
    assert json_shape_error([b'{"query": {"embedding": [0.1, 0.2]}}']) is None
    values = b"[" + b"0," * MAX_JSON_VALUES + b"0]"
    status, body = json_shape_error([values[:1000], values[1000:]])  # type: ignore[misc]
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    status, body = json_shape_error([deep[:7], deep[7:]])  # type: ignore[misc]
    assert (status, json.loads(body)["error"]["code"]) == (422, "validation_error")
    wide = b"[" + b"[[[]]]," * 1000 + b"[]]"  # many brackets, never deep
    assert json_shape_error([wide]) is None


def test_a_huge_embedding_is_refused_before_parsing(
    keyed: TestClient, tokens: dict[str, str]
) -> None:
    body = b'{"query": {"embedding": [' + b"0.1," * MAX_JSON_VALUES + b"0.1]}}"
    r = keyed.post("/search", content=body, headers=bearer(tokens["read"]))
    assert_error(r, 413, "payload_too_large", str(MAX_JSON_VALUES), "before parsing")
    deep = b"[" * 100 + b"]" * 100
    r = keyed.post("/search", content=deep, headers=bearer(tokens["read"]))
    assert_error(r, 422, "validation_error", f"deeper than {MAX_JSON_DEPTH}")


def b64_frame(data: bytes) -> dict[str, object]:
    return {"image_b64": base64.b64encode(data).decode(), "bbox": [1, 1, 4, 4]}


@pytest.mark.parametrize(
    "make", [bombs.os2_bmp, bombs.gif, bombs.webp, bombs.j2k_header], ids=lambda f: f.__name__
)
def test_a_query_frame_over_the_pixel_limit_is_413(
    keyed: TestClient, tokens: dict[str, str], make: object
) -> None:
    body = {"query": {"frames": [frame(), b64_frame(make())]}}  # type: ignore[operator]
    r = keyed.post("/search", json=body, headers=bearer(tokens["read"]))
    message = assert_error(r, 413, "image_too_large", "query.frames.1.image_b64", "pixels")
    assert "OpenCV" not in message and "cv::" not in message


def test_an_unknown_format_is_refused_before_decoding(
    keyed: TestClient, tokens: dict[str, str]
) -> None:
    body = {"query": {"frames": [b64_frame(b"P7\nWIDTH 3\nHEIGHT 3\n")]}}
    r = keyed.post("/search", json=body, headers=bearer(tokens["read"]))
    assert_error(r, 422, "invalid_input", "refused before decoding")


def test_frames_are_cropped_as_they_are_decoded(setup: Setup) -> None:
    config = PreprocessConfig(im_size=16, bbox_scale_factor=1.5)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    data = cv2.imencode(".png", pixels[:, :, ::-1])[1].tobytes()
    frames = [
        FrameInput(image_b64=base64.b64encode(data).decode(), bbox=[10.0 * i, 5.0, 20.0, 15.0])
        for i in range(3)
    ]
    full, boxes = decode_frames(frames, "body.query", setup.settings)
    crops, crop_boxes = decode_frames(frames, "body.query", setup.settings, config)
    assert [c.shape for c in crops] == [(16, 16, 3)] * 3  # no full frame kept
    for image, box, crop, crop_box in zip(full, boxes, crops, crop_boxes, strict=True):
        expected = crop_frame(image, box, config)
        assert np.array_equal(crop, expected)
        assert np.array_equal(crop_frame(crop, crop_box, config), expected)  # the encoder's crop
    assert np.array_equal(full[0], decode_image(data))


def test_an_indexing_job_frame_over_the_limit_names_its_file(tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "frames", 3)
    (folder / "000000.jpg").write_bytes(bombs.gif())
    csv = write_csv(tmp_path / "dets.csv", 3)
    with pytest.raises(ImageTooLargeError, match=r"000000\.jpg") as info:
        frames_source(folder, csv)
    assert isinstance(info.value, InvalidInputError)  # the job fails with a clear 4xx-kind error


def test_a_strip_frame_over_the_limit_is_unavailable_naming_no_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "secret-folder" / "000001.png"
    bomb.parent.mkdir()
    bomb.write_bytes(bombs.gif())
    frames = strips.StripFrames([bomb], np.array([[1.0, 1.0, 4.0, 4.0]]), True)
    monkeypatch.setattr(strips, "strip_frames", lambda *args, **kwargs: frames)
    record = SimpleNamespace(id=7)
    with pytest.raises(strips.FramesUnavailableError, match="over the pixel limit") as info:
        strips.tracklet_strip(record, None, [tmp_path], 3, 64)  # type: ignore[arg-type]
    assert "secret-folder" not in str(info.value) and "000001" not in str(info.value)
