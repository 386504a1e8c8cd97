"""``POST /predict`` and the prediction filters of ``POST /search``, over a real SQLite store,
FAISS index and probe files, with a fake encoder (no ONNX, no torch)."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.indexing import linear_probe

from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.predictions import predict
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.model.scoring.probe import Probe, probe_path
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

DIM = 8
VERSION = "fake-v1"


class ColourEncoder:
    """A tracklet's embedding is a fixed projection of its mean RGB colour."""

    version = VERSION
    dim = DIM
    reid_threshold = 0.6

    def __init__(self) -> None:
        self._projection = np.random.default_rng(7).standard_normal((DIM, 3))

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for img in images], axis=0)
        v = self._projection @ (mean / 255.0 - 0.5)
        return (v / np.linalg.norm(v)).astype(np.float32)


def _png_b64(rgb: Sequence[int]) -> str:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:] = rgb
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(data.tobytes()).decode()


@dataclass
class World:
    settings: Settings
    vectors: dict[int, np.ndarray]
    size: Probe
    histology: Probe
    other_version_id: int


def _probes() -> tuple[Probe, Probe]:
    rng = np.random.default_rng(11)
    size = linear_probe("size", VERSION, rng.standard_normal(DIM), bias=0.2, temperature=1.5)
    histology = linear_probe("histology", VERSION, rng.standard_normal(DIM))
    return size, histology


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("predict")
    settings = Settings(home=root, max_k=50)
    size, histology = _probes()
    size.save(probe_path(settings.probes_folder, "size"))
    histology.save(probe_path(settings.probes_folder, "histology"))
    store = Store(settings.database_url)
    rng = np.random.default_rng(0)
    vectors: dict[int, np.ndarray] = {}
    for p in range(3):
        rows = []
        for j in range(8):
            v = rng.standard_normal(DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            # the last procedure was indexed before the probes were installed
            preds = predict([size, histology], v) if p < 2 else ()
            rows.append(TrackletRow(f"p{p}/t{j}", j, j + 4, 5, v, predictions=preds))
        ids = store.replace_procedure(f"proc/{p}", "test", "synthetic", VERSION, rows)
        vectors.update({i: r.embedding for i, r in zip(ids, rows, strict=True)})
    other = TrackletRow("old/t0", 0, 4, 5, np.ones(DIM, dtype=np.float32) / np.sqrt(DIM))
    (other_id,) = store.replace_procedure("proc/old", "test", "synthetic", "old-v0", [other])
    open_or_rebuild(settings.index_dir, store, VERSION, DIM, save=True)
    store.close()
    return World(settings, vectors, size, histology, other_id)


def _client(settings: Settings) -> TestClient:
    app = create_app(settings)
    app.state.encoder = ColourEncoder()
    return TestClient(app)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    with _client(world.settings) as c:
        yield c


def _expected(probe: Probe, vector: np.ndarray) -> dict[str, Any]:
    p = probe.predict_tracklet(vector)
    return {"label": p.label, "probability": pytest.approx(p.probability, abs=1e-6)}


def _error(r: Any, status: int, code: str, *in_message: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    for text in in_message:
        assert text in body["error"]["message"], body["error"]["message"]


def test_predict_by_id_uses_the_stored_embedding(client: TestClient, world: World) -> None:
    for tid, vector in list(world.vectors.items())[::5]:
        r = client.post("/predict", json={"tracklet": {"tracklet_id": tid}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tracklet_id"] == tid and body["encoder_version"] == VERSION
        assert set(body["predictions"]) == {"size", "histology"}
        for task, probe in (("size", world.size), ("histology", world.histology)):
            got = body["predictions"][task]
            assert {k: got[k] for k in ("label", "probability")} == _expected(probe, vector)
            assert got["probe_version"] == probe.version


def test_predict_by_frames_and_by_embedding(client: TestClient, world: World) -> None:
    frames = [{"image_b64": _png_b64((180, 60, 50)), "bbox": [2, 2, 8, 8]}] * 2
    r = client.post("/predict", json={"tracklet": {"frames": frames}, "tasks": ["size"]})
    assert r.status_code == 200, r.text
    vector = ColourEncoder().embed_tracklet([np.full((16, 16, 3), (180, 60, 50))], np.zeros((1, 4)))
    body = r.json()
    assert body["tracklet_id"] is None and set(body["predictions"]) == {"size"}
    got = body["predictions"]["size"]
    assert {k: got[k] for k in ("label", "probability")} == _expected(world.size, vector)
    raw = 4.0 * vector  # not normalised: the service normalises, as indexing does
    r = client.post("/predict", json={"tracklet": {"embedding": raw.tolist()}, "tasks": ["size"]})
    assert r.json()["predictions"]["size"]["probability"] == pytest.approx(got["probability"])


def test_search_results_carry_stored_predictions(client: TestClient, world: World) -> None:
    query = next(iter(world.vectors.values()))
    r = client.post("/search", json={"query": {"embedding": query.tolist()}, "k": 24})
    results = r.json()["results"]
    assert len(results) == 24
    for hit in results:
        if hit["procedure_uid"] == "proc/2":
            assert hit["predictions"] == {}  # indexed before the probes
        else:
            vector = world.vectors[hit["tracklet_id"]]
            assert {k: hit["predictions"]["size"][k] for k in ("label", "probability")} == (
                _expected(world.size, vector)
            )


@pytest.mark.parametrize(
    ("field", "label", "task"),
    [
        ("predicted_size", "diminutive", "size"),
        ("predicted_size", "non_diminutive", "size"),
        ("predicted_histology", "adenoma", "histology"),
    ],
)
def test_search_filtered_by_prediction_equals_exhaustive_search(
    client: TestClient, world: World, field: str, label: str, task: str
) -> None:
    probe = world.size if task == "size" else world.histology
    predicted = {
        tid
        for tid, v in world.vectors.items()
        if tid <= 16 and probe.predict_tracklet(v).label == label  # procedures 0 and 1
    }
    assert 0 < len(predicted) < 16
    query = np.random.default_rng(3).standard_normal(DIM)
    r = client.post("/search", json={"query": {"embedding": query.tolist()}, "k": 50, field: label})
    assert r.status_code == 200, r.text
    q = query / np.linalg.norm(query)
    expected = sorted(predicted, key=lambda i: -float(world.vectors[i] @ q))
    assert [h["tracklet_id"] for h in r.json()["results"]] == expected
    assert all(h["predictions"][task]["label"] == label for h in r.json()["results"])


def test_bad_task_or_label_is_422(client: TestClient) -> None:
    r = client.post("/predict", json={"tracklet": {"tracklet_id": 1}, "tasks": ["polarity"]})
    _error(r, 422, "validation_error", "tasks")
    r = client.post("/predict", json={"tracklet": {"tracklet_id": 1}, "tasks": []})
    _error(r, 422, "validation_error", "tasks")
    r = client.post("/search", json={"query": {"tracklet_id": 1}, "predicted_size": "tiny"})
    _error(r, 422, "validation_error", "predicted_size")
    r = client.post("/predict", json={"tracklet": {"tracklet_id": 1}, "extra": 1})
    _error(r, 422, "validation_error")


def test_unknown_tracklet_is_404(client: TestClient) -> None:
    _error(
        client.post("/predict", json={"tracklet": {"tracklet_id": 99999}}),
        404,
        "tracklet_not_found",
    )


def test_tracklet_of_another_encoder_is_409(client: TestClient, world: World) -> None:
    r = client.post("/predict", json={"tracklet": {"tracklet_id": world.other_version_id}})
    _error(r, 409, "encoder_mismatch", "old-v0", VERSION)


def test_wrong_embedding_size_is_422(client: TestClient) -> None:
    r = client.post("/predict", json={"tracklet": {"embedding": [1.0] * (DIM + 1)}})
    _error(r, 422, "validation_error", "embedding")


def test_missing_probe_is_503_naming_it(world: World, tmp_path: Path) -> None:
    settings = world.settings.model_copy(update={"probes_dir": tmp_path / "probes"})
    world.size.save(probe_path(settings.probes_folder, "size"))  # histology not installed
    with _client(settings) as c:
        health = c.get("/healthz").json()
        assert health["probes"] == {"size": world.size.version}
        assert set(health["missing_probes"]) == {"histology"}
        assert (
            c.post("/predict", json={"tracklet": {"tracklet_id": 1}, "tasks": ["size"]}).status_code
            == 200
        )
        r = c.post("/predict", json={"tracklet": {"tracklet_id": 1}})
        _error(r, 503, "probe_not_installed", "histology", "polypindex probe train histology")
        r = c.post("/search", json={"query": {"tracklet_id": 1}, "predicted_histology": "adenoma"})
        # names the file, never the server path (issue 11)
        _error(r, 503, "probe_not_installed", "histology", "histology.npz")
        assert str(tmp_path / "probes") not in r.text


def test_probe_of_another_encoder_is_not_loaded(world: World, tmp_path: Path) -> None:
    settings = world.settings.model_copy(update={"probes_dir": tmp_path / "probes"})
    rng = np.random.default_rng(1)
    linear_probe("size", "other-encoder", rng.standard_normal(DIM)).save(
        probe_path(settings.probes_folder, "size")
    )
    (settings.probes_folder / "histology.npz").write_bytes(b"not a probe")
    with _client(settings) as c:
        health = c.get("/healthz").json()
        assert health["probes"] == {}
        assert "other-encoder" in health["missing_probes"]["size"]
        assert "histology.npz" in health["missing_probes"]["histology"]
        r = c.post("/predict", json={"tracklet": {"tracklet_id": 1}, "tasks": ["size"]})
        _error(r, 503, "probe_not_installed", "other-encoder", VERSION)
