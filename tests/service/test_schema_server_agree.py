"""The published schema and the server agree (issue 24): what the OpenAPI document
refuses, the server refuses, and what it accepts, the server does not refuse as
malformed; ``OPTIONS`` (or any method a path lacks) lists every method of the path."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from helpers.service_api import Setup

from polypindex.indexer.reads import umap_available
from polypindex.service.schemas import EXAMPLE_PNG_B64


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def accepts(openapi: dict[str, Any], component: str, body: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def frames(image_b64: str) -> dict[str, Any]:
    return {"frames": [{"image_b64": image_b64, "bbox": [0, 0, 1, 1]}]}


@pytest.mark.parametrize(
    "image_b64",
    ["data:image/0;base64,0", "QUJD=", "QUJDRA", "=", "data:image/png;base64,", "QU=J"],
)
def test_malformed_base64_is_refused_by_both(
    openapi: dict[str, Any], client: TestClient, image_b64: str
) -> None:
    body = {"query": frames(image_b64)}
    assert not accepts(openapi, "SearchRequest", body)
    r = client.post("/search", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text


@pytest.mark.parametrize(
    "image_b64",
    [
        EXAMPLE_PNG_B64,
        "data:image/png;base64," + EXAMPLE_PNG_B64,
        EXAMPLE_PNG_B64[:64] + "\r\n" + EXAMPLE_PNG_B64[64:] + "\n",
    ],
)
def test_well_formed_base64_is_accepted_by_both(
    openapi: dict[str, Any], client: TestClient, image_b64: str
) -> None:
    body = {"query": frames(image_b64), "k": 1}
    assert accepts(openapi, "SearchRequest", body)
    r = client.post("/search", json=body)
    assert r.status_code != 422 or r.json()["error"]["code"] != "validation_error", r.text


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"query": {"tracklet_id": 1}, "queries": [{"tracklet_id": 2}]}, False),
        ({}, False),
        ({"query": None, "queries": None}, False),
        ({"query": {"tracklet_id": 1}}, True),
        ({"query": None, "queries": [{"tracklet_id": 1}]}, True),
        ({"query": {"tracklet_id": 1}, "exclude_same_procedure": 0}, False),
        ({"query": {"tracklet_id": 1}, "exclude_same_procedure": "true"}, False),
        ({"query": {"tracklet_id": 1}, "exclude_same_procedure": True}, True),
    ],
)
def test_search_bodies_are_judged_alike(
    openapi: dict[str, Any], client: TestClient, setup: Setup, body: dict[str, Any], valid: bool
) -> None:
    body = {
        k: ({"tracklet_id": setup.red_id} if v == {"tracklet_id": 1} else v)
        for k, v in body.items()
    }
    assert accepts(openapi, "SearchRequest", body) is valid
    r = client.post("/search", json=body)
    assert (r.status_code != 422) is valid, r.text


def _query_schema(openapi: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    params = openapi["paths"][path]["get"]["parameters"]
    return dict(next(p for p in params if p["name"] == name)["schema"])


def test_umap_is_offered_only_where_it_runs(openapi: dict[str, Any], client: TestClient) -> None:
    schema = {**_query_schema(openapi, "/index/map", "method"), "components": {}}
    listed = jsonschema.Draft202012Validator(schema).is_valid("umap")
    assert listed is umap_available()
    r = client.get("/index/map", params={"method": "umap"})
    assert (r.status_code == 422) is not listed, r.text
    assert client.get("/index/map", params={"method": "pca"}).status_code == 200


@pytest.mark.parametrize("value", ["0.5", "1700000000", "-1", "1e9"])
def test_a_bare_number_is_not_a_date_time(client: TestClient, value: str) -> None:
    r = client.get("/procedures", params={"indexed_before": value})
    assert r.status_code == 422, r.text
    assert "indexed_before" in r.json()["error"]["message"]
    r = client.get("/procedures", params={"indexed_after": value})
    assert r.status_code == 422, r.text


def test_an_iso_date_time_is_accepted(client: TestClient) -> None:
    r = client.get("/procedures", params={"indexed_before": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/procedures", {"GET", "HEAD", "POST"}),
        ("/procedures/some/uid", {"GET", "HEAD", "DELETE"}),
        ("/search", {"POST"}),
    ],
)
def test_options_lists_every_method_of_the_path(
    client: TestClient, path: str, methods: set[str]
) -> None:
    r = client.options(path)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= methods - {"HEAD"}
    assert {m.strip() for m in r.headers["allow"].split(",")} <= methods
