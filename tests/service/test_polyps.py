"""``GET /procedures/{uid}/polyps``, entity ids on ``/search`` hits and the calibrated
``/reid``: 404 for an unknown procedure, the auth paths, the response shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.auth import add_key, bearer, keys_settings
from helpers.service_api import (
    VERSION,
    MeanColourEncoder,
    Setup,
    assert_error,
    build_setup,
    started,
)

from polypindex.indexer.grouping import group_stored, procedure_polyps
from polypindex.indexer.store import Store
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.cosine_curve import CosineCalibration
from polypindex.model.scoring.pairs import pair_evidence
from polypindex.model.scoring.reid import decide
from polypindex.service.decisions import facts_of_record

# a model calibrated before calibration by context (one cosine curve): read as legacy
CALIBRATION = Calibration.from_cosine(CosineCalibration("platt", {"a": 8.0, "b": -4.0}, 0.7))


def expected_decision(store: Store, a: int, b: int, cosine: float):  # type: ignore[no-untyped-def]
    """The decision the model's rule gives the stored pair (a, b)."""
    facts = [facts_of_record(store.get_tracklet(t)) for t in (a, b)]
    return decide(pair_evidence(cosine, *facts), CALIBRATION)


class CalibratedEncoder(MeanColourEncoder):
    reid_calibration = CALIBRATION


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    setup = build_setup(tmp_path_factory.mktemp("polyps"))
    store = Store(setup.settings.database_url)
    group_stored(store, VERSION, None, uids=["proc/a", "proc/b"], reid_threshold=0.6)
    store.close()
    return setup


@pytest.fixture(scope="module")
def client(grouped: Setup) -> Iterator[TestClient]:
    with started(grouped.settings, CalibratedEncoder()) as c:
        yield c


def test_polyps_of_a_grouped_procedure(grouped: Setup, client: TestClient) -> None:
    r = client.get("/procedures/proc/a/polyps")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["uid"] == "proc/a" and body["encoder_version"] == VERSION and body["grouped"]
    assert body["method"] == "average" and body["cut"] == 0.6 and body["calibrated"] is False
    assert body["n_polyps"] == len(body["entities"]) >= 1
    ids = sorted(t for e in body["entities"] for t in e["tracklet_ids"])
    assert ids == sorted(grouped.ids_of("proc/a")) and body["ungrouped_tracklet_ids"] == []
    assert [e["entity_id"] for e in body["entities"]] == list(range(body["n_polyps"]))
    for e in body["entities"]:
        assert len(e["spans"]) == len(e["tracklet_ids"])
        assert e["start_frame"] == min(s[0] for s in e["spans"])
        assert e["end_frame"] == max(s[1] for s in e["spans"])
    store = Store(grouped.settings.database_url)
    expected = procedure_polyps(store, "proc/a")
    store.close()
    assert [e.tracklet_ids for e in expected.entities] == [
        e["tracklet_ids"] for e in body["entities"]
    ]


def test_a_procedure_not_grouped_yet_lists_its_tracklets(
    grouped: Setup, client: TestClient
) -> None:
    body = client.get("/procedures/proc/c/polyps").json()
    assert body["grouped"] is False and body["entities"] == [] and body["n_polyps"] == 0
    assert sorted(body["ungrouped_tracklet_ids"]) == sorted(grouped.ids_of("proc/c"))


def test_unknown_procedure_is_404(client: TestClient) -> None:
    r = client.get("/procedures/nope/polyps")
    assert_error(r, 404, "procedure_not_found", "nope")
    r = client.get("/procedures/proc/a/polyps", params={"encoder_version": "other"})
    assert_error(r, 404, "procedure_not_found")


def test_search_hits_carry_entity_and_calibrated_probability(
    grouped: Setup, client: TestClient
) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": grouped.red_id}, "k": 50})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    store = Store(grouped.settings.database_url)
    entities = {
        t: e.entity_id
        for uid in ("proc/a", "proc/b")
        for e in procedure_polyps(store, uid).entities
        for t in e.tracklet_ids
    }
    for hit in hits:
        assert hit["entity_id"] == entities.get(hit["tracklet_id"])  # None for proc/c
        # the hit carries the model's decision for the pair (the probability /reid gives)
        assert hit["same_polyp_probability"] == hit["decision"]["probability"]
        r = client.post(
            "/reid",
            json={"a": {"tracklet_id": grouped.red_id}, "b": {"tracklet_id": hit["tracklet_id"]}},
        )
        assert r.json()["probability"] == pytest.approx(hit["decision"]["probability"], abs=1e-6)
        assert r.json()["answer"] == hit["decision"]["answer"]
    store.close()
    assert any(h["entity_id"] is None for h in hits) and any(
        h["entity_id"] is not None for h in hits
    )


def test_reid_is_calibrated_when_the_model_has_a_calibration(
    grouped: Setup, client: TestClient
) -> None:
    a, b = sorted(grouped.ids_of("proc/a"))[:2]
    r = client.post("/reid", json={"a": {"tracklet_id": a}, "b": {"tracklet_id": b}})
    assert r.status_code == 200, r.text
    body = r.json()
    cosine = float(grouped.vectors[a] @ grouped.vectors[b])
    store = Store(grouped.settings.database_url)
    expected = expected_decision(store, a, b, cosine)
    store.close()
    assert body["calibrated"] is True and body["answer"] == expected.answer
    if expected.probability is None:
        assert body["probability"] is None
    else:
        assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["same_polyp"] is (body["answer"] == "same")


def test_reid_without_calibration_gives_no_probability(grouped: Setup) -> None:
    """An uncalibrated model has no P(same polyp): the answer abstains, with the cosine."""
    a, b = sorted(grouped.ids_of("proc/a"))[:2]
    with started(grouped.settings, MeanColourEncoder(reid_threshold=0.6)) as c:
        body = c.post("/reid", json={"a": {"tracklet_id": a}, "b": {"tracklet_id": b}}).json()
    cosine = float(grouped.vectors[a] @ grouped.vectors[b])
    assert body["calibrated"] is False and body["probability"] is None
    assert body["similarity"] == pytest.approx(cosine, abs=1e-6)
    assert body["answer"] == "uncertain" and body["same_polyp"] is False


def test_polyps_need_a_read_key_in_keys_mode(grouped: Setup, tmp_path: Path) -> None:
    settings = keys_settings(grouped.settings)
    token = add_key(settings, "polyps-reader", "read")
    with started(settings, CalibratedEncoder()) as c:
        assert_error(c.get("/procedures/proc/a/polyps"), 401, "unauthorized")
        assert_error(
            c.get("/procedures/proc/a/polyps", headers=bearer("wrong")), 401, "unauthorized"
        )
        r = c.get("/procedures/proc/a/polyps", headers=bearer(token))
        assert r.status_code == 200, r.text
        assert_error(
            c.get("/procedures/nope/polyps", headers=bearer(token)), 404, "procedure_not_found"
        )
