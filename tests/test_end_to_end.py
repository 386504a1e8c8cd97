"""The whole path once, on a tiny generated dataset: synth → train (1 epoch, tiny
model) → export → size/histology probes → index (with predictions) → app
in-process → search, predict. The query's own polyp's other tracklets must be
found, ranked well above chance."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.synth import small_dataset

from polypindex.indexer.pipeline import index_dataset
from polypindex.indexer.predictions import installed_probes
from polypindex.indexer.store import Store
from polypindex.model.core.layout import Layout
from polypindex.model.nets.export import export_onnx
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.evaluation import chance_retrieval_map
from polypindex.model.scoring.metrics import average_precision
from polypindex.service.app import create_app
from polypindex.service.settings import Settings
from polypindex.training.probe import train_probe_on_encoder
from polypindex.training.train import train
from polypindex.training.train_config import load_train_config

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    data = small_dataset(
        root, procedures=6, frames=600, size=(128, 104), tracklet_length=(30, 60), seed=7
    )
    cfg = load_train_config(
        "test_tiny",
        {"data_root": str(data), "out_dir": str(root / "model"), "cache_dir": str(root / "cache")},
    )
    result = train(cfg, progress=False)
    onnx_path = root / "model" / "encoder.onnx"
    export_onnx(result.best_checkpoint, onnx_path)
    for task in ("size", "histology"):  # into model/probes/, where the service looks
        train_probe_on_encoder(
            task, data, onnx_path, cache_dir=root / "probe_cache", progress=False
        )
    encoder = layout_encoder(Layout(), onnx_path)
    probes = installed_probes(root / "model" / "probes", encoder.version)
    assert sorted(p.task for p in probes) == ["histology", "size"]
    db_url = f"sqlite:///{root / 'index' / 'polypindex.db'}"
    store = Store(db_url)
    for split in SPLITS:
        index_dataset(data, split, store, root / "index", encoder, progress=False, probes=probes)
    store.close()
    return {
        "root": root,
        "data": data,
        "onnx": onnx_path,
        "db": Path(db_url.removeprefix("sqlite:///")),
    }


@pytest.fixture(scope="module")
def client(built: dict[str, Path]) -> TestClient:
    settings = Settings(
        home=built["root"],
        model_path=built["onnx"],
        database_url=f"sqlite:///{built['db']}",
        index_dir=built["root"] / "index",
    )
    with TestClient(create_app(settings)) as c:
        yield c  # type: ignore[misc]


def test_health_reports_the_index(client: TestClient, built: dict[str, Path]) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["encoder_version"] == layout_encoder(Layout(), built["onnx"]).version
    assert body["index_size"] > 10
    assert set(body["probes"]) == {"size", "histology"} and body["missing_probes"] == {}


def test_same_polyp_tracklets_are_found(client: TestClient, built: dict[str, Path]) -> None:
    store = Store(f"sqlite:///{built['db']}")
    ids = [i for p in store.list_procedures() for i in store.tracklet_ids_for_procedure(p.uid)]
    records = store.get_tracklets(ids)
    labels = {i: records[i].identity_label for i in ids}
    queries = [i for i in ids if sum(labels[j] == labels[i] for j in ids) > 1]
    assert len(queries) >= 5, "the tiny dataset must have polyps seen in several tracklets"
    aps = []
    for q in queries:
        r = client.post("/search", json={"query": {"tracklet_id": q}, "k": len(ids) - 1})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        got = [row["tracklet_id"] for row in results]
        assert q not in got and len(got) == len(ids) - 1
        scores = np.array([row["score"] for row in results])
        assert np.all(np.diff(scores) <= 1e-6), "results must be sorted by score"
        relevant = np.array([labels[t] == labels[q] for t in got])
        aps.append(average_precision(scores, relevant))
    found_map = float(np.mean(aps))
    chance = chance_retrieval_map([labels[i] for i in ids])
    assert found_map > chance + 0.15, f"mAP through the API {found_map:.3f} vs chance {chance:.3f}"


def test_query_by_frames_matches_query_by_id(client: TestClient, built: dict[str, Path]) -> None:
    store = Store(f"sqlite:///{built['db']}")
    proc = store.list_procedures()[0]
    tid = store.tracklet_ids_for_procedure(proc.uid)[0]
    record = store.get_tracklet(tid)
    # rebuild the tracklet's frames + boxes from the dataset it was indexed from
    from polypindex.model.data.coco import load_coco_split

    tracklet = next(
        t
        for split in SPLITS
        for t in load_coco_split(built["data"], split).tracklets()
        if t.key == record.key and proc.uid.endswith(t.sequence_id)
    )
    frames = [
        {
            "image_b64": base64.b64encode(Path(p).read_bytes()).decode(),
            "bbox": [float(v) for v in b],
        }
        for p, b in zip(tracklet.image_paths, tracklet.boxes, strict=True)
    ]
    by_frames = client.post("/search", json={"query": {"frames": frames}, "k": 3}).json()["results"]
    assert by_frames[0]["tracklet_id"] == tid
    assert by_frames[0]["score"] == pytest.approx(1.0, abs=1e-4)
    reid = client.post("/reid", json={"a": {"frames": frames}, "b": {"tracklet_id": tid}}).json()
    assert reid["similarity"] == pytest.approx(1.0, abs=1e-4) and reid["same_polyp"] is True


def test_predictions_are_stored_served_and_filterable(
    client: TestClient, built: dict[str, Path]
) -> None:
    store = Store(f"sqlite:///{built['db']}")
    ids = [i for p in store.list_procedures() for i in store.tracklet_ids_for_procedure(p.uid)]
    stored = store.predictions_for(ids)
    assert set(stored) == set(ids), "every indexed tracklet has its predictions"
    for tid in ids[:5]:
        r = client.post("/predict", json={"tracklet": {"tracklet_id": tid}})
        assert r.status_code == 200, r.text
        for task, p in r.json()["predictions"].items():
            assert p["label"] == stored[tid][task].label
            assert p["probability"] == pytest.approx(stored[tid][task].probability, abs=1e-6)
    labels = {stored[i]["size"].label for i in ids}
    for label in labels:
        r = client.post(
            "/search", json={"query": {"tracklet_id": ids[0]}, "k": 50, "predicted_size": label}
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        expected = {i for i in ids if stored[i]["size"].label == label} - {ids[0]}
        got = {h["tracklet_id"] for h in results}
        assert got == expected if len(expected) <= 50 else (len(got) == 50 and got <= expected)
        assert all(h["predictions"]["size"]["label"] == label for h in results)
    store.close()
