"""The orchestrators' probes: ``GET /livez`` (always 200) and ``GET /readyz`` (503 until
the model, the store and the index are ready, saying what is missing), both open."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.service_api import MeanColourEncoder, Setup, started

from polypindex.service import resources
from polypindex.service.app import create_app
from polypindex.service.settings import Settings


def _readyz(c: TestClient) -> tuple[int, dict[str, object]]:
    r = c.get("/readyz")
    return r.status_code, r.json()


def test_ready_when_model_store_and_index_are(client: TestClient) -> None:
    assert _readyz(client) == (200, {"ready": True, "missing": []})
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "alive"}


def test_not_ready_before_start_up(setup: Setup) -> None:
    c = TestClient(create_app(setup.settings))  # no `with`: the lifespan has not run
    status, body = _readyz(c)
    assert status == 503 and body["ready"] is False
    assert any("not started" in m for m in body["missing"])  # type: ignore[union-attr]
    assert c.get("/livez").status_code == 200


def test_not_ready_without_a_model_and_healthz_still_200(setup: Setup) -> None:
    with started(setup.settings, None) as c:
        status, body = _readyz(c)
        health = c.get("/healthz")
        live = c.get("/livez")
    assert status == 503
    missing = body["missing"]
    assert isinstance(missing, list) and missing
    assert "encoder model not loaded" in missing[0] and "polypindex demo" in missing[0]
    assert any("vector index not loaded" in m for m in missing)  # it needs the model
    assert str(setup.root) not in " ".join(missing)  # no server path
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert live.status_code == 200


def test_an_empty_index_is_ready(tmp_path: Path) -> None:
    """Nothing indexed yet is no reason to keep traffic away: jobs fill the index."""
    with started(Settings(home=tmp_path), MeanColourEncoder()) as c:
        assert _readyz(c) == (200, {"ready": True, "missing": []})
        assert c.get("/healthz").json()["status"] == "degraded"


def test_not_ready_while_the_database_does_not_answer(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(setup.settings, MeanColourEncoder()) as c:
        assert _readyz(c)[0] == 200
        monkeypatch.setattr(resources, "store_ok", lambda store: False)
        status, body = _readyz(c)
    assert status == 503
    assert body["missing"] == ["the database does not answer; see the server log"]


def test_not_ready_while_the_index_is_rebuilt(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with started(setup.settings, MeanColourEncoder()) as c:
        upkeep = c.app.state.resources.upkeep  # type: ignore[attr-defined]
        monkeypatch.setattr(upkeep, "serving", lambda: None)
        monkeypatch.setattr(upkeep, "status", lambda: ("rebuilding", "snapshot unusable"))
        status, body = _readyz(c)
        search = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
    assert status == 503 and body["missing"] == ["snapshot unusable"]
    assert search.status_code == 503  # what readiness says is what the endpoints do


def test_a_readiness_check_added_to_the_list_is_asked(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = [*resources.READINESS_CHECKS, lambda res: "the index is 3 procedures behind"]
    monkeypatch.setattr(resources, "READINESS_CHECKS", checks)
    with started(setup.settings, MeanColourEncoder()) as c:
        assert _readyz(c) == (
            503,
            {"ready": False, "missing": ["the index is 3 procedures behind"]},
        )


def test_probes_need_no_key(setup: Setup) -> None:
    settings = setup.settings.model_copy(update={"auth": "keys"})
    with started(settings, MeanColourEncoder()) as c:
        assert c.post("/search", json={"query": {"tracklet_id": setup.red_id}}).status_code == 401
        assert c.get("/readyz").status_code == 200
        assert c.get("/livez").status_code == 200


def test_probes_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    ready = paths["/readyz"]["get"]
    assert ready["operationId"] == "readyz" and paths["/livez"]["get"]["operationId"] == "livez"
    assert "ReadinessResponse" in str(ready["responses"]["503"])
