"""A probe whose validation AUROC is below ``min_probe_auroc`` shows its class but never a
decision, in ``POST /predict`` and in ``/search`` hits alike (issue 23); a stored
prediction of a probe that is not the installed one is not judged reliable either."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.predictions import predict
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.model.scoring.probe import CLASSES, Probe, probe_path
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

DIM = 8
VERSION = "fake-q1"


class StandInEncoder:
    version = VERSION
    dim = DIM
    reid_threshold = 0.6

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        raise AssertionError("these tests query by embedding")


def _probe(task: str, seed: int, auroc: float | None) -> Probe:
    w = np.random.default_rng(seed).standard_normal((1, DIM)).astype(np.float32)
    metadata: dict[str, Any] = {
        "task": task,
        "classes": list(CLASSES[task]),
        "head": "linear",
        "temperature": 1.0,
        "encoder_version": VERSION,
        "dim": DIM,
    }
    if auroc is not None:
        metadata["metrics"] = {"validation": {"auroc": auroc, "ece": 0.05, "source": "val"}}
    return Probe({"linear.weight": w, "linear.bias": np.zeros(1, dtype=np.float32)}, metadata)


def _home(root: Path) -> tuple[Settings, dict[int, np.ndarray], Probe, Probe]:
    settings = Settings(home=root)
    size, histology = _probe("size", 1, 0.91), _probe("histology", 2, 0.62)
    replaced = _probe("histology", 3, 0.95)  # made the predictions of proc/1, since replaced
    size.save(probe_path(settings.probes_folder, "size"))
    histology.save(probe_path(settings.probes_folder, "histology"))
    store = Store(settings.database_url)
    rng = np.random.default_rng(0)
    vectors: dict[int, np.ndarray] = {}
    for p, probes in enumerate(([size, histology], [size, replaced])):
        rows = []
        for j in range(5):
            v = rng.standard_normal(DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            rows.append(TrackletRow(f"p{p}/t{j}", j, j + 4, 5, v, predictions=predict(probes, v)))
        ids = store.replace_procedure(f"proc/{p}", "test", "synthetic", VERSION, rows)
        vectors.update({i: r.embedding for i, r in zip(ids, rows, strict=True)})
    open_or_rebuild(settings.index_dir, store, VERSION, DIM, save=True)
    store.close()
    return settings, vectors, size, histology


def _client(settings: Settings) -> TestClient:
    app = create_app(settings)
    app.state.encoder = StandInEncoder()
    return TestClient(app)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[int, np.ndarray]]:
    settings, vectors, _, _ = _home(tmp_path_factory.mktemp("quality"))
    return settings, vectors


def _predict(c: TestClient, v: np.ndarray) -> dict[str, Any]:
    body = {"tracklet": {"embedding": v.tolist()}, "tasks": ["size", "histology"]}
    r = c.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_predict_shows_an_unreliable_probe_without_a_decision(
    home: tuple[Settings, dict[int, np.ndarray]],
) -> None:
    settings, vectors = home
    with _client(settings) as c:
        got = _predict(c, next(iter(vectors.values())))
    size, histology = got["size"], got["histology"]
    assert size["reliable"] is True and size["decision"] == size["label"]
    assert "0.91" in size["quality_reason"]
    assert histology["reliable"] is False and histology["decision"] is None
    assert histology["label"] in CLASSES["histology"]  # the class is still shown
    assert "0.62 < 0.7" in histology["quality_reason"]


def test_the_setting_decides_what_is_reliable(
    home: tuple[Settings, dict[int, np.ndarray]],
) -> None:
    settings, vectors = home
    strict = settings.model_copy(update={"min_probe_auroc": 0.95})
    with _client(strict) as c:
        got = _predict(c, next(iter(vectors.values())))
    assert got["size"]["reliable"] is False and got["size"]["decision"] is None


def test_search_hits_show_the_same_quality(
    home: tuple[Settings, dict[int, np.ndarray]],
) -> None:
    settings, _ = home
    with _client(settings) as c:
        r = c.post("/search", json={"query": {"embedding": [1.0] * DIM}, "k": 10})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 10
    for hit in hits:
        size, histology = hit["predictions"]["size"], hit["predictions"]["histology"]
        assert size["reliable"] is True and size["decision"] == size["label"]
        assert histology["reliable"] is False and histology["decision"] is None
        if hit["procedure_uid"] == "proc/1":  # a probe since replaced, however good it was
            assert "not the one installed" in histology["quality_reason"]
        else:
            assert "0.62" in histology["quality_reason"]
