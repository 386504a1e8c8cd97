"""Index upkeep off the request path (docs/search.md): jobs reach the serving index at
once, deletes are tombstones, ``/healthz`` and requests never sync, a corrupt index is
rebuilt while ``/healthz`` says so, and batched queries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.indexing import FakeEncoder, write_coco
from helpers.service_api import (
    DIM,
    MAX_K,
    VERSION,
    MeanColourEncoder,
    assert_error,
    search,
    started,
    unit_rows,
)

import polypindex.service.resources as resources
import polypindex.service.upkeep as upkeep_module
from polypindex.indexer.generations import generation_dir
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import faiss_base, verify_snapshot
from polypindex.service.settings import Settings
from polypindex.service.upkeep import ServingSink

ALL = {"query": {"embedding": [1.0] * DIM}, "k": MAX_K}


class ServiceFakeEncoder(FakeEncoder):
    """The indexer's fake encoder, also answering the service's ``embed_tracklet``."""

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        seq = np.stack([cv2.resize(img, (32, 32)) for img in images]).astype(np.float32) / 255.0
        return self.embed_sequences([seq.transpose(0, 3, 1, 2)])[0]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Settings, Store, list[int]]]:
    settings = Settings(home=tmp_path, index_refresh_seconds=3600)  # no polling: in-process only
    store = Store(settings.database_url)
    rng = np.random.default_rng(5)
    ids = store.replace_procedure("p/1", "test", "s", VERSION, unit_rows(rng, "p/1", 4))
    ids += store.replace_procedure("p/2", "test", "s", VERSION, unit_rows(rng, "p/2", 3))
    yield settings, store, ids
    store.close()


def _ids(c: TestClient) -> set[int]:
    return {r["tracklet_id"] for r in search(c, **ALL)["results"]}


def test_a_finished_job_is_searchable_within_a_second_without_a_second_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polypindex.indexer.pipeline as pipeline

    def no_second_copy(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a job opened a second copy of the index")

    monkeypatch.setattr(pipeline, "open_or_rebuild", no_second_copy)
    settings = Settings(home=tmp_path / "home", index_refresh_seconds=3600)
    data = write_coco(settings.data_roots[0] / "d")
    encoder = ServiceFakeEncoder()
    with started(settings, encoder) as c:
        assert isinstance(c.app.state.jobs.sink, ServingSink)  # type: ignore[attr-defined]
        job = c.post(
            "/procedures", json={"kind": "coco", "root": str(data), "min_tracklet_length": 3}
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        while (body := c.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.01)
        finished = time.monotonic()
        assert body["status"] == "succeeded", body
        stored = set(c.app.state.store.tracklet_ids(encoder.version).tolist())  # type: ignore[attr-defined]
        assert stored
        while True:
            r = c.post("/search", json={"query": {"embedding": [1.0] * 16}, "k": MAX_K})
            if r.status_code == 200 and {h["tracklet_id"] for h in r.json()["results"]} >= stored:
                break
            assert time.monotonic() - finished < 1.0, "not searchable 1 s after the job ended"
            time.sleep(0.01)
        assert c.get("/healthz").json()["index_size"] == len(stored)


def test_a_delete_is_a_tombstone_and_no_request_syncs(
    world: tuple[Settings, Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _, ids = world
    calls: list[str] = []
    real = upkeep_module.sync_with_store

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(upkeep_module, "sync_with_store", counted)
    with started(settings, MeanColourEncoder()) as c:
        assert _ids(c) == set(ids)
        r = c.delete("/procedures/p/1")
        assert r.status_code == 200 and r.json()["tracklets_removed"] == 4
        assert _ids(c) == set(ids[4:])  # at once
        assert c.get("/healthz").json()["index_size"] == 3
        other = Store(settings.database_url)  # another process writes: nobody syncs yet
        other.replace_procedure(
            "p/3", "test", "s", VERSION, unit_rows(np.random.default_rng(1), "p/3", 2)
        )
        other.close()
        for _ in range(5):
            c.get("/healthz")
            search(c, **ALL)
        assert _ids(c) == set(ids[4:]) and c.get("/healthz").json()["index_size"] == 3
    assert all(name == "polypindex-index-upkeep" for name in calls)  # never a request


def _corrupt(index: Any) -> None:
    faiss = faiss_base.faiss
    flat = faiss.downcast_index(index._backend.faiss_index.index)
    codes = faiss.vector_to_array(flat.codes).view(np.float32).copy()
    codes[:] = 3.26e38
    flat.codes.clear()
    faiss.copy_array_to_vector(codes.view(np.uint8), flat.codes)


def test_a_corrupt_index_is_rebuilt_while_healthz_says_so(
    world: tuple[Settings, Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _, ids = world
    gate = threading.Event()
    real = upkeep_module.build_from_store

    def slow(*a: Any, **k: Any) -> Any:
        assert gate.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(upkeep_module, "build_from_store", slow)
    with started(settings, MeanColourEncoder()) as c:
        _corrupt(c.app.state.index_upkeep.index)  # type: ignore[attr-defined]
        assert_error(c.post("/search", json=ALL), 503, "not_ready", "corrupt")
        health = c.get("/healthz").json()
        assert health["status"] == "degraded" and health["index_state"] == "rebuilding"
        assert any("rebuil" in reason for reason in health["reasons"])
        assert_error(c.post("/search", json=ALL), 503, "not_ready")
        gate.set()
        deadline = time.monotonic() + 5
        while c.get("/healthz").json()["index_state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _ids(c) == set(ids)
        scores = [r["score"] for r in search(c, **ALL)["results"]]
        assert all(-1.001 <= s <= 1.001 for s in scores)


def test_a_large_broken_snapshot_is_rebuilt_in_the_background(
    world: tuple[Settings, Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _, ids = world
    with started(settings, MeanColourEncoder()) as c:
        assert _ids(c) == set(ids)
    folder = generation_dir(settings.index_dir, VERSION)
    (folder / "index.faiss").write_bytes(b"not an index")
    monkeypatch.setattr(resources, "SYNC_REBUILD_MAX", 0)  # as if the store were huge
    with started(settings, MeanColourEncoder()) as c:
        deadline = time.monotonic() + 5
        while c.get("/healthz").json()["index_state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _ids(c) == set(ids)
    assert verify_snapshot(folder) is None  # written back


def test_several_queries_in_one_request(world: tuple[Settings, Store, list[int]]) -> None:
    settings, _, ids = world
    with started(settings, MeanColourEncoder()) as c:
        singles = [search(c, query={"tracklet_id": i}, k=3)["results"] for i in ids[:3]]
        body = search(c, queries=[{"tracklet_id": i} for i in ids[:3]], k=3)
        assert body["results"] == [] and [b["results"] for b in body["batch"]] == singles
        mixed = search(c, queries=[{"tracklet_id": ids[0]}, {"embedding": [1.0] * DIM}], k=2)
        assert ids[0] not in {h["tracklet_id"] for h in mixed["batch"][0]["results"]}
        assert len(mixed["batch"][1]["results"]) == 2
        both = {"query": {"tracklet_id": ids[0]}, "queries": [{"tracklet_id": ids[1]}]}
        assert_error(c.post("/search", json=both), 422, "validation_error", "exactly one")
        too_many = {"queries": [{"tracklet_id": ids[0]}] * 65}
        assert_error(c.post("/search", json=too_many), 422, "validation_error")
        bad = {"queries": [{"tracklet_id": ids[0]}, {"embedding": [1.0]}]}
        assert_error(c.post("/search", json=bad), 422, "validation_error", "body.queries.1")
