"""``POST /search`` over a real SQLite store and FAISS index, with a fake encoder (no ONNX,
no torch): rankings equal an exhaustive search, filters, and the index catching up with
the store while serving."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.service_api import (
    DIM,
    MAX_K,
    PER_PROCEDURE,
    RED,
    VERSION,
    MeanColourEncoder,
    Setup,
    assert_same_ranking,
    frame,
    png_b64,
    search,
    started,
    unit_rows,
)

from polypindex.indexer.store import Store
from polypindex.service.settings import Settings


def test_search_by_id_equals_exhaustive_search_without_itself(
    client: TestClient, setup: Setup
) -> None:
    for query_id in list(setup.vectors)[::5]:
        body = search(client, query={"tracklet_id": query_id}, k=MAX_K)
        expected = setup.exhaustive(setup.vectors[query_id], exclude={query_id})
        assert len(expected) == len(setup.vectors) - 1
        assert_same_ranking(body["results"], expected)
        assert body["encoder_version"] == VERSION


def test_search_results_carry_the_tracklet_rows(client: TestClient, setup: Setup) -> None:
    hit = search(client, query={"embedding": setup.vectors[setup.red_id].tolist()}, k=1)["results"][
        0
    ]
    assert hit == {
        "tracklet_id": setup.red_id,
        "score": pytest.approx(1.0, abs=1e-5),
        "procedure_uid": "proc/a",
        "key": "proc/a/red",
        "start_frame": 0,
        "end_frame": 3,
        "n_frames": 4,
        "identity_label": None,
        "predictions": {},
        "entity_id": None,  # not grouped (tests/service/test_polyps.py)
        "same_polyp_probability": 1.0,  # its own embedding: identical
        "decision": {
            "answer": "same",  # identical embeddings
            "probability": 1.0,
            "context": "unknown",  # a query given as an embedding
            "reason": "identical embeddings",
            "estimable": True,
            "same_threshold": None,
            "different_threshold": None,
            "label": "same polyp · p=1.00",
        },
    }


def test_search_by_embedding_is_normalised(client: TestClient, setup: Setup) -> None:
    query = np.random.default_rng(5).standard_normal(DIM)
    body = search(client, query={"embedding": (3.0 * query).tolist()}, k=7)
    assert_same_ranking(body["results"], setup.exhaustive(query)[:7])


def test_search_by_frames_finds_the_tracklet_with_that_look(
    client: TestClient, setup: Setup
) -> None:
    results = search(client, query={"frames": [frame(), frame()]}, k=3)["results"]
    assert results[0]["tracklet_id"] == setup.red_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert_same_ranking(results, setup.exhaustive(setup.vectors[setup.red_id])[:3])


def test_data_url_and_line_wrapped_base64_are_accepted(client: TestClient, setup: Setup) -> None:
    b64 = png_b64(RED)
    wrapped = "data:image/png;base64," + "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))
    results = search(client, query={"frames": [{"image_b64": wrapped, "bbox": [0, 0, 5, 5]}]}, k=1)
    assert results["results"][0]["tracklet_id"] == setup.red_id


def test_exclude_same_procedure(client: TestClient, setup: Setup) -> None:
    query_id = setup.red_id
    own = setup.ids_of("proc/a")
    body = search(client, query={"tracklet_id": query_id}, k=MAX_K, exclude_same_procedure=True)
    assert_same_ranking(body["results"], setup.exhaustive(setup.vectors[query_id], exclude=own))
    assert {r["procedure_uid"] for r in body["results"]} == {"proc/b", "proc/c"}


def test_exclude_tracklet_ids(client: TestClient, setup: Setup) -> None:
    query = setup.vectors[setup.red_id]
    first_two = {i for i, _ in setup.exhaustive(query)[:2]}
    body = search(
        client, query={"embedding": query.tolist()}, k=4, exclude_tracklet_ids=sorted(first_two)
    )
    assert_same_ranking(body["results"], setup.exhaustive(query, exclude=first_two)[:4])


@pytest.mark.parametrize("k", [3, MAX_K])
def test_procedure_filter_returns_as_many_as_available(
    client: TestClient, setup: Setup, k: int
) -> None:
    query = setup.vectors[setup.red_id]  # in proc/a, so proc/c's tracklets rank anywhere
    only = setup.ids_of("proc/c")
    body = search(client, query={"tracklet_id": setup.red_id}, k=k, procedure_uids=["proc/c"])
    assert_same_ranking(body["results"], setup.exhaustive(query, only=only)[:k])
    assert len(body["results"]) == min(k, PER_PROCEDURE)


def test_procedure_filter_with_the_query_procedure_excludes_itself(
    client: TestClient, setup: Setup
) -> None:
    body = search(
        client, query={"tracklet_id": setup.red_id}, k=MAX_K, procedure_uids=["proc/a", "proc/b"]
    )
    only = setup.ids_of("proc/a") | setup.ids_of("proc/b")
    expected = setup.exhaustive(setup.vectors[setup.red_id], exclude={setup.red_id}, only=only)
    assert_same_ranking(body["results"], expected)


def _found_within(c: TestClient, query: dict[str, Any], want: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if {r["tracklet_id"] for r in search(c, **query)["results"]} == want:
            return True
        time.sleep(0.02)
    return False


def test_index_catches_up_with_procedures_indexed_and_deleted_while_serving(
    tmp_path: Path,
) -> None:
    # Another process writes the store: the upkeep thread catches up in the background
    # (requests never sync), within a few passes of index_refresh_seconds=0.
    settings = Settings(home=tmp_path, index_refresh_seconds=0)
    writer = Store(settings.database_url)
    rng = np.random.default_rng(11)
    first = writer.replace_procedure("p/1", "test", "synthetic", VERSION, unit_rows(rng, "p/1", 3))
    query = {"query": {"embedding": [1.0] * DIM}, "k": MAX_K}
    with started(settings, MeanColourEncoder()) as c:
        assert {r["tracklet_id"] for r in search(c, **query)["results"]} == set(first)
        second = writer.replace_procedure(
            "p/2", "test", "synthetic", VERSION, unit_rows(rng, "p/2", 2)
        )
        assert _found_within(c, query, {*first, *second}, 5.0)
        writer.delete_procedure("p/1")
        assert _found_within(c, query, set(second), 5.0)  # rows gone are never shown
        deadline = time.monotonic() + 5.0  # and the index drops them in the background
        while c.get("/healthz").json()["index_size"] != len(second):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    writer.close()


def test_index_refresh_waits_for_its_interval(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, index_refresh_seconds=3600)
    writer = Store(settings.database_url)
    rng = np.random.default_rng(12)
    first = writer.replace_procedure("p/1", "test", "synthetic", VERSION, unit_rows(rng, "p/1", 2))
    with started(settings, MeanColourEncoder()) as c:
        writer.replace_procedure("p/2", "test", "synthetic", VERSION, unit_rows(rng, "p/2", 2))
        body = search(c, query={"embedding": [1.0] * DIM}, k=MAX_K)
    assert {r["tracklet_id"] for r in body["results"]} == set(first)
    writer.close()
