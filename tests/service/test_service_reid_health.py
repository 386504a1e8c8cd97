"""``POST /reid`` (the decision, concurrency of frame embedding), ``GET /healthz`` and the
OpenAPI document, over the same store and index as the search tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.service_api import (
    DIM,
    VERSION,
    MeanColourEncoder,
    Setup,
    assert_error,
    frame,
    started,
)

from polypindex.service.settings import Settings

# -- reid ----------------------------------------------------------------------------------


def test_reid_is_symmetric_and_matches_cosine(client: TestClient, setup: Setup) -> None:
    a, b = list(setup.vectors)[1], list(setup.vectors)[8]
    ab = client.post("/reid", json={"a": {"tracklet_id": a}, "b": {"tracklet_id": b}}).json()
    ba = client.post(
        "/reid", json={"a": {"tracklet_id": b}, "b": {"embedding": setup.vectors[a].tolist()}}
    ).json()
    cosine = float(setup.vectors[a] @ setup.vectors[b])
    assert ab["similarity"] == pytest.approx(cosine, abs=1e-5)
    assert ba["similarity"] == pytest.approx(ab["similarity"], abs=1e-6)
    assert ab["encoder_version"] == VERSION
    # no calibration: the similarity is not a probability, and nothing is decided
    assert ab["probability"] is None and ab["answer"] == "uncertain"
    assert ab["same_polyp"] is False and "no calibration" in ab["reason"]


def test_reid_frames_against_their_indexed_tracklet(client: TestClient, setup: Setup) -> None:
    r = client.post("/reid", json={"a": {"frames": [frame()]}, "b": {"tracklet_id": setup.red_id}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    # identical embeddings: the same polyp whatever the context
    assert body["probability"] == 1.0 and body["answer"] == "same"
    assert body["same_polyp"] is True and body["context"] == "unknown"


class SlowEncoder(MeanColourEncoder):
    """Records how many ``embed_tracklet`` calls run at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self._lock:
            self.running -= 1
        return super().embed_tracklet(images, boxes)


def test_frame_embedding_concurrency_is_bounded(setup: Setup) -> None:
    settings = setup.settings.model_copy(update={"max_concurrent_embeddings": 1})
    encoder = SlowEncoder()
    with started(settings, encoder) as c:
        codes: list[int] = []
        body = {"a": {"frames": [frame()]}, "b": {"frames": [frame()]}}
        threads = [
            threading.Thread(target=lambda: codes.append(c.post("/reid", json=body).status_code))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200, 200, 200]
    assert encoder.most == 1


# -- health --------------------------------------------------------------------------------


def test_healthz_ok(client: TestClient, setup: Setup) -> None:
    body = client.get("/healthz").json()
    missing = body.pop("missing_probes")
    assert body.pop("auth") == "open"  # no API key, loopback host (tests/service/test_auth.py)
    assert "127.0.0.1" in body.pop("auth_reason")
    assert body.pop("index_state") == "ready"  # read from the upkeep thread, never synced here
    assert body.pop("encoder_runtime") is None  # this stand-in encoder has no describe()
    calibration = body.pop("calibration")  # the stand-in has none: always uncertain
    assert (
        calibration["calibrated"] is False
        and "no calibration" in calibration["always_uncertain"]["all"]
    )
    assert body == {
        "status": "ok",  # probes are optional: none installed is not "degraded"
        "encoder_version": VERSION,
        "embedding_dim": DIM,
        "index_size": len(setup.vectors),
        "store_ok": True,
        "reasons": [],
        "probes": {},
    }
    assert set(missing) == {"size", "histology"}
    assert "polypindex probe train size" in missing["size"]


def test_healthz_degraded_without_model_file(setup: Setup) -> None:
    with started(setup.settings, None) as c:
        r = c.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded" and body["encoder_version"] is None
    assert body["store_ok"] is True and body["index_size"] is None
    assert any(
        "polypindex demo" in reason and "encoder.onnx" in reason for reason in body["reasons"]
    )


def test_healthz_names_a_clashing_install(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment with two ONNX Runtimes is degraded, and says which (docs/gpu.md)."""
    from polypindex.model.runtime import install
    from polypindex.service import resources

    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1", "faiss-cpu": "1.15.1"}
    monkeypatch.setattr(
        resources, "install_problems", lambda: install.install_problems(versions.get)
    )
    with started(setup.settings, MeanColourEncoder()) as c:
        body = c.get("/healthz").json()
    assert body["status"] == "degraded"
    (reason,) = body["reasons"]
    assert "2 ONNX Runtime distributions" in reason and "onnxruntime-gpu 1.31.1" in reason


def test_healthz_degraded_with_an_empty_index(tmp_path: Path) -> None:
    with started(Settings(home=tmp_path), MeanColourEncoder()) as c:
        body = c.get("/healthz").json()
        r = c.post("/search", json={"query": {"embedding": [1.0] * DIM}})
    assert body["status"] == "degraded" and body["index_size"] == 0
    assert any("polypindex index" in reason for reason in body["reasons"])
    assert_error(r, 503, "not_ready")


def test_openapi_documents_examples_and_error_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]
    examples = search["requestBody"]["content"]["application/json"]["examples"]
    assert {"by_id", "by_frames", "by_embedding"} <= set(examples)
    assert "ErrorBody" in str(search["responses"]["422"])
    assert (
        "examples" in spec["paths"]["/reid"]["post"]["requestBody"]["content"]["application/json"]
    )
