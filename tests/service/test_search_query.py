"""The search request as a typed query (``service.search.SearchQuery``), its one check of
``k`` against ``max_k``, and the one ``Resources`` object on ``app.state`` (issue 21)."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from helpers.service_api import (
    MAX_K,
    ExplodingEncoder,
    MeanColourEncoder,
    Setup,
    frame,
    started,
)

from polypindex.service.app import create_app
from polypindex.service.resources import Resources
from polypindex.service.search import SearchQuery
from polypindex.service.search_schemas import SearchRequest

OVER_K = {
    "error": {
        "code": "validation_error",
        "message": f"body.k: k must be between 1 and {MAX_K}, got {MAX_K + 1}",
    }
}


@pytest.mark.parametrize(
    "body",
    [
        {"query": {"tracklet_id": 1}},
        {"queries": [{"tracklet_id": 1}, {"tracklet_id": 2}]},
        # refused before the probe check (no probe is installed here: that would be a 503)
        {"query": {"tracklet_id": 1}, "predicted_size": "diminutive"},
    ],
)
def test_k_over_max_k_is_the_same_422(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/search", json={**body, "k": MAX_K + 1})
    assert r.status_code == 422 and r.json() == OVER_K


def test_k_below_one_is_the_schema_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 1}, "k": 0})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "body.k: Input should be greater than or equal to 1"


def test_k_over_max_k_is_refused_before_any_frame_is_embedded(setup: Setup) -> None:
    """The encoder raises on any frames: a 422, not a 500, shows nothing was embedded."""
    with started(setup.settings, ExplodingEncoder(), raise_server_exceptions=False) as c:
        over = c.post("/search", json={"query": {"frames": [frame()]}, "k": MAX_K + 1})
        at_limit = c.post("/search", json={"query": {"frames": [frame()]}, "k": MAX_K})
    assert over.status_code == 422 and over.json() == OVER_K
    assert at_limit.status_code == 500


def test_the_query_of_a_batch_request() -> None:
    body = SearchRequest.model_validate(
        {
            "queries": [{"tracklet_id": 3}, {"embedding": [1.0, 0.0]}],
            "k": 7,
            "exclude_tracklet_ids": [9, 9, 4],
            "procedure_uids": ["p/1", "p/2"],
            "predicted_histology": "adenoma",
            "predicted_size": "diminutive",
        }
    )
    query = SearchQuery.of(body, max_k=7)
    assert query.batch and query.k == 7
    assert query.where == ("body.queries.0", "body.queries.1")
    assert [q.kind for q in query.inputs] == ["tracklet_id", "embedding"]
    assert query.exclude_tracklet_ids == {4, 9}
    assert query.procedure_uids == ("p/1", "p/2")
    assert query.labels == (("size", "diminutive"), ("histology", "adenoma"))
    assert not query.exclude_same_procedure


def test_the_query_of_a_single_request_and_its_bound() -> None:
    body = SearchRequest.model_validate({"query": {"tracklet_id": 3}, "k": 8})
    query = SearchQuery.of(body, max_k=8)
    assert not query.batch and query.where == ("body.query",)
    assert query.labels == () and query.procedure_uids is None
    with pytest.raises(RequestValidationError):
        SearchQuery.of(body, max_k=7)


def test_one_resources_object_holds_what_is_loaded(setup: Setup) -> None:
    """``app.state.encoder`` / ``store`` / ``index`` / ``jobs`` / ``index_upkeep`` are the
    fields of ``app.state.resources``, before start-up, while serving and after."""
    app = create_app(setup.settings)
    encoder = MeanColourEncoder()
    app.state.encoder = encoder  # injected before start-up
    assert app.state.resources.encoder is encoder
    assert app.state.resources.problems == {"startup": "the service has not started yet"}
    with TestClient(app) as c:
        res = app.state.resources
        assert isinstance(res, Resources) and res.encoder is encoder
        assert app.state.store is res.store is not None
        assert app.state.index is res.index is not None
        assert app.state.index_upkeep is res.upkeep is not None
        assert app.state.jobs is res.jobs
        assert c.get("/healthz").json()["index_size"] == len(res.index)
    assert res.store is None and res.upkeep is None and res.jobs is None
    assert app.state.store is None
