"""``POST /reid`` and ``/search`` hits decide by context (issue 23): a stored tracklet
brings its procedure and span, a query given as an embedding has none; a pair across
procedures of a calibration without cross-procedure identities is never ``same``."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from helpers.service_api import MeanColourEncoder, Setup, started

from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.contexts import ContextFit, Curve, Rule


def _calibration() -> Calibration:
    """Within one procedure: p = sigmoid(10·cosine − 5), same at ≥ 0.9, different at
    ≤ 0.1; across procedures: not estimable (no cross-procedure identities)."""
    curve = Curve(
        "logistic", ("cosine",), {"mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}
    )
    within = ContextFit(
        "within",
        True,
        0.4,
        curve,
        Rule("same", threshold=0.9, value=0.95, interval=(0.8, 0.99), n=40, correct=38),
        Rule("different", threshold=0.1, value=0.97, interval=(0.9, 0.99), n=60, correct=58),
    )
    why = "no same-polyp pairs across procedures in the calibration data"
    cross = ContextFit(
        "cross",
        False,
        0.0,
        None,
        Rule("same", reason=why),
        Rule("different", reason=why),
        reason=why,
    )
    return Calibration({"within": within, "cross": cross})


@pytest.fixture()
def calibrated(setup: Setup) -> TestClient:
    encoder = MeanColourEncoder()
    encoder.reid_calibration = _calibration()  # type: ignore[attr-defined]
    with started(setup.settings, encoder) as c:
        yield c


def _reid(c: TestClient, a: dict, b: dict) -> dict:
    r = c.post("/reid", json={"a": a, "b": b})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("with_calibration", [True, False])
def test_a_tracklet_with_itself_is_the_same_polyp(
    setup: Setup, client: TestClient, calibrated: TestClient, with_calibration: bool
) -> None:
    c = calibrated if with_calibration else client
    tid = {"tracklet_id": setup.red_id}
    body = _reid(c, tid, tid)
    assert body["answer"] == "same" and body["same_polyp"] is True
    assert body["probability"] >= 0.99 and body["estimable"] is True
    assert body["calibrated"] is with_calibration
    assert body["label"].startswith("same polyp")


def _by_procedure(setup: Setup) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tid in setup.vectors:
        out.setdefault(setup.procedure_of[tid], []).append(tid)
    return out


def test_stored_pairs_are_decided_in_their_context(setup: Setup, calibrated: TestClient) -> None:
    groups = [ids for ids in _by_procedure(setup).values() if len(ids) >= 2]
    a, b = groups[0][0], groups[0][1]
    other = next(ids for ids in _by_procedure(setup).values() if a not in ids)[0]
    within = _reid(calibrated, {"tracklet_id": a}, {"tracklet_id": b})
    assert within["context"] == "within" and within["estimable"] is True
    p = within["probability"]
    expected = "same" if p >= 0.9 else "different" if p <= 0.1 else "uncertain"
    assert within["answer"] == expected and within["threshold"] == 0.9
    cross = _reid(calibrated, {"tracklet_id": a}, {"tracklet_id": other})
    assert cross["context"] == "cross" and cross["answer"] == "uncertain"
    assert cross["same_polyp"] is False and cross["estimable"] is False and cross["reason"]


def test_an_embedding_has_no_context(setup: Setup, calibrated: TestClient) -> None:
    a, b = list(setup.vectors)[1], list(setup.vectors)[8]
    body = _reid(calibrated, {"embedding": setup.vectors[a].tolist()}, {"tracklet_id": b})
    assert body["context"] == "unknown" and body["answer"] == "uncertain"
    assert body["probability"] is None and "procedure" in body["reason"]


def test_search_hits_carry_the_decision(setup: Setup, calibrated: TestClient) -> None:
    query = list(setup.vectors)[1]
    r = calibrated.post("/search", json={"query": {"tracklet_id": query}, "k": 20})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    own = setup.procedure_of[query]
    contexts = set()
    for hit in hits:
        d = hit["decision"]
        contexts.add(d["context"])
        assert hit["same_polyp_probability"] == d["probability"]
        if hit["procedure_uid"] != own:
            assert d["context"] == "cross" and d["answer"] != "same"  # never across
        else:
            assert d["context"] == "within"
            want = _reid(calibrated, {"tracklet_id": query}, {"tracklet_id": hit["tracklet_id"]})
            assert d["answer"] == want["answer"]
            assert d["probability"] == pytest.approx(want["probability"], rel=1e-4)
    assert contexts == {"within", "cross"}


def test_label_numbers_never_print_equal_across_a_comparison(
    setup: Setup, calibrated: TestClient
) -> None:
    seen = 0
    for tid in list(setup.vectors)[:6]:
        r = calibrated.post("/search", json={"query": {"tracklet_id": tid}, "k": 10})
        for hit in r.json()["results"]:
            m = re.search(r"p=([0-9.]+) \(same needs ≥ ([0-9.]+)\)", hit["decision"]["label"])
            if m:
                seen += 1
                assert m.group(1) != m.group(2) and float(m.group(1)) < float(m.group(2))
    assert seen


def test_healthz_says_where_every_answer_is_uncertain(calibrated: TestClient) -> None:
    health = calibrated.get("/healthz").json()["calibration"]
    assert health["calibrated"] is True
    assert health["contexts"]["within"]["answers"] == ["same", "different"]
    assert health["contexts"]["cross"]["estimable"] is False
    always = health["always_uncertain"]
    assert set(always) == {"cross", "unknown"}  # within can answer; these never do
    assert "across procedures" in always["cross"] and "procedure" in always["unknown"]
