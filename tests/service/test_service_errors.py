"""One test per error path of the HTTP API: the status, the code and a message naming the
cause, in the one error body."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.service_api import (
    DIM,
    MAX_FRAMES,
    MAX_K,
    OTHER_VERSION,
    RED,
    VERSION,
    ExplodingEncoder,
    MeanColourEncoder,
    Setup,
    assert_error,
    frame,
    png_b64,
    started,
)

from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.cosine_curve import CosineCalibration
from polypindex.service.deps import get_encoder
from polypindex.service.settings import Settings


def test_unknown_tracklet_id_is_404(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 987654}})
    assert_error(r, 404, "tracklet_not_found", "987654")


def test_unknown_tracklet_id_in_reid_is_404(client: TestClient, setup: Setup) -> None:
    r = client.post(
        "/reid", json={"a": {"tracklet_id": setup.red_id}, "b": {"tracklet_id": 987654}}
    )
    assert_error(r, 404, "tracklet_not_found", "987654")


def test_unknown_procedure_uid_is_404(client: TestClient, setup: Setup) -> None:
    r = client.post(
        "/search", json={"query": {"tracklet_id": setup.red_id}, "procedure_uids": ["proc/zzz"]}
    )
    assert_error(r, 404, "procedure_not_found", "proc/zzz")


def test_no_query_kind_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {}})
    assert_error(
        r,
        422,
        "validation_error",
        "body.query",
        "exactly one of tracklet_id, frames, embedding",
        "got none",
    )


def test_two_query_kinds_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 1, "embedding": [1.0] * DIM}})
    assert_error(r, 422, "validation_error", "body.query", "got tracklet_id and embedding")


def test_missing_query_is_422(client: TestClient) -> None:
    assert_error(client.post("/search", json={"k": 3}), 422, "validation_error", "body.query")


def test_unknown_query_field_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet": 1}})
    assert_error(r, 422, "validation_error", "body.query.tracklet")


@pytest.mark.parametrize(
    "bbox", [[1, 2, 0, 5], [1, 2, 5, -1], [1, 2, 3]], ids=["zero_w", "neg_h", "three"]
)
def test_bad_bbox_is_422(client: TestClient, bbox: list[float]) -> None:
    frames = [frame(), {"image_b64": png_b64(RED), "bbox": bbox}]
    r = client.post("/search", json={"query": {"frames": frames}})
    assert_error(r, 422, "validation_error", "body.query.frames.1.bbox")


def test_non_finite_bbox_is_422(client: TestClient) -> None:
    content = '{"query": {"frames": [{"image_b64": "AAAA", "bbox": [1, 2, NaN, 4]}]}}'
    r = client.post("/search", content=content, headers={"content-type": "application/json"})
    assert_error(r, 422, "validation_error", "body.query.frames.0.bbox")


def test_bad_base64_is_422_naming_the_frame(client: TestClient) -> None:
    # Outside the published pattern: a schema error (issue 11: the schema is as strict as
    # the server); base64 of a wrong length too, since the pattern is base64's own grammar
    # (issue 24: what the pattern accepts, the decoder accepts).
    for bad in ("this is *not* base64!", "abcde"):
        frames = [frame(), {"image_b64": bad, "bbox": [0, 0, 4, 4]}]
        r = client.post("/search", json={"query": {"frames": frames}})
        assert_error(r, 422, "validation_error", "body.query.frames.1.image_b64", "pattern")


def test_undecodable_image_is_422_naming_the_frame(client: TestClient) -> None:
    # no image format starts so (a GIF signature with nonsense sizes is a bomb: 413 instead)
    garbage = base64.b64encode(b"\x00\x01 not really an image").decode()
    frames = [frame(), frame(), {"image_b64": garbage, "bbox": [0, 0, 4, 4]}]
    r = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"frames": frames}})
    assert_error(r, 422, "invalid_input", "body.b.frames.2.image_b64", "decod")


def test_image_over_the_size_limit_is_422(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    big = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
    r = client.post(
        "/search", json={"query": {"frames": [{"image_b64": big, "bbox": [0, 0, 9, 9]}]}}
    )
    # over the published maxLength (the base64 of max_image_bytes): refused before decoding
    assert_error(r, 422, "validation_error", "body.query.frames.0.image_b64", "20000 bytes")


def test_wrong_embedding_dim_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"embedding": [0.1] * (DIM + 1)}})
    assert_error(
        r, 422, "validation_error", "body.query.embedding", f"expects {DIM}", f"{DIM + 1} values"
    )


def test_zero_embedding_is_422(client: TestClient) -> None:
    r = client.post("/reid", json={"a": {"embedding": [0.0] * DIM}, "b": {"tracklet_id": 1}})
    assert_error(r, 422, "validation_error", "body.a.embedding", "zeros")


@pytest.mark.parametrize("k", [0, -3, MAX_K + 1])
def test_k_out_of_range_is_422(client: TestClient, k: int) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 1}, "k": k})
    assert_error(r, 422, "validation_error", "body.k")


def test_too_many_frames_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"frames": [frame()] * (MAX_FRAMES + 1)}})
    assert_error(r, 422, "validation_error", "body.query.frames", f"at most {MAX_FRAMES}")


def test_empty_frames_is_422(client: TestClient) -> None:
    assert_error(
        client.post("/search", json={"query": {"frames": []}}),
        422,
        "validation_error",
        "body.query.frames",
    )


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "validation_error")


def test_tracklet_of_another_encoder_version_is_409(client: TestClient, setup: Setup) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": setup.other_version_id}})
    assert_error(r, 409, "encoder_mismatch", OTHER_VERSION, VERSION)


def test_model_missing_is_503(setup: Setup) -> None:
    with started(setup.settings, None) as c:
        search = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
        reid = c.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}})
    for r in (search, reid):
        assert_error(r, 503, "not_ready", "encoder model not loaded", "polypindex demo")


def test_corrupt_model_file_starts_degraded_and_answers_503(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.model_path.parent.mkdir(parents=True)
    settings.model_path.write_bytes(b"not an onnx model")
    with started(settings, None) as c:
        health = c.get("/healthz").json()
        r = c.post("/reid", json={"a": {"embedding": [1.0]}, "b": {"embedding": [1.0]}})
    assert health["status"] == "degraded" and health["encoder_version"] is None
    # names the file, not its server path (issue 11)
    message = assert_error(r, 503, "not_ready", "encoder.onnx", "polypindex demo")
    assert str(settings.model_path.parent) not in message


def test_database_missing_is_503(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, database_url="sqlite:///" + str(tmp_path / "a-file" / "x.db")
    )
    (tmp_path / "a-file").write_text("not a folder")
    with started(settings, MeanColourEncoder()) as c:
        health = c.get("/healthz").json()
        r = c.post("/search", json={"query": {"embedding": [1.0] * DIM}})
    assert health["status"] == "degraded" and health["store_ok"] is False
    assert_error(r, 503, "auth_unavailable", "database")  # closed: keys cannot be checked


def test_unexpected_exception_is_500_without_internals(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR),
        started(setup.settings, ExplodingEncoder(), raise_server_exceptions=False) as c,
    ):
        r = c.post("/search", json={"query": {"frames": [frame()]}})
    message = assert_error(r, 500, "internal_error")
    assert "kaboom" not in r.text and "Traceback" not in r.text and "secret" not in r.text
    assert "server log" in message
    assert "kaboom" in caplog.text  # the traceback went to the log


def test_dependency_override_replaces_the_encoder(client: TestClient) -> None:
    app = client.app
    before = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}}).json()
    encoder = MeanColourEncoder()
    encoder.reid_calibration = Calibration.from_cosine(  # type: ignore[attr-defined]
        CosineCalibration("platt", {"a": 8.0, "b": -4.0}, threshold=0.0)
    )
    app.dependency_overrides[get_encoder] = lambda: encoder  # type: ignore[attr-defined]
    try:
        body = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}}).json()
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert before["calibrated"] is False and body["calibrated"] is True


def test_unknown_route_uses_the_error_body(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
