"""What generated clients rely on: explicit operation ids, binary JPEG schemas, typed job
progress and params, and every timestamp aware UTC with its offset."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from helpers.indexing import write_coco
from helpers.service_jobs import coco_job, job_client, job_settings, wait_for

from polypindex.service.app import create_app
from polypindex.service.settings import Settings

settings = pytest.fixture(job_settings, name="settings")
client = pytest.fixture(job_client, name="client")

EXPECTED_IDS = {
    ("/search", "post"): "search",
    ("/reid", "post"): "reid",
    ("/predict", "post"): "predict",
    ("/healthz", "get"): "healthz",
    ("/livez", "get"): "livez",
    ("/readyz", "get"): "readyz",
    ("/procedures", "post"): "submit_procedures",
    ("/procedures", "get"): "list_procedures",
    ("/procedures/{uid}", "get"): "get_procedure",
    ("/procedures/{uid}", "delete"): "delete_procedure",
    ("/procedures/{uid}/polyps", "get"): "get_procedure_polyps",
    ("/jobs", "get"): "list_jobs",
    ("/jobs/{job_id}", "get"): "get_job",
    ("/tracklets/{tracklet_id}", "get"): "get_tracklet",
    ("/tracklets/{tracklet_id}/thumbnail", "get"): "get_tracklet_thumbnail",
    ("/tracklets/{tracklet_id}/strip", "get"): "get_tracklet_strip",
    ("/index/map", "get"): "index_map",
}


def _spec(tmp_path: object) -> dict[str, object]:
    return create_app(Settings(home=tmp_path)).openapi()  # type: ignore[arg-type]


def test_every_operation_has_its_explicit_id(tmp_path: object) -> None:
    paths = _spec(tmp_path)["paths"]
    found = {
        (path, method): op["operationId"]
        for path, ops in paths.items()  # type: ignore[attr-defined]
        for method, op in ops.items()
    }
    assert EXPECTED_IDS.items() <= found.items()
    for (path, method), op_id in found.items():  # a route added later too: its own name
        assert not op_id.endswith(f"_{method}"), (path, op_id)  # FastAPI's search_search_post
    assert len(set(found.values())) == len(found)


def test_jpeg_responses_have_a_binary_schema(tmp_path: object) -> None:
    paths = _spec(tmp_path)["paths"]
    for path in ("/tracklets/{tracklet_id}/thumbnail", "/tracklets/{tracklet_id}/strip"):
        content = paths[path]["get"]["responses"]["200"]["content"]  # type: ignore[index]
        assert content == {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}


def test_job_progress_and_params_are_typed(tmp_path: object) -> None:
    schemas = _spec(tmp_path)["components"]["schemas"]  # type: ignore[index]
    job = schemas["JobResponse"]["properties"]
    assert job["progress"]["$ref"] == "#/components/schemas/JobProgress"
    assert job["params"]["$ref"] == "#/components/schemas/JobParamsShown"
    assert "eta_s" in schemas["JobProgress"]["properties"]
    assert "root" in schemas["JobParamsShown"]["properties"]
    for name in ("created_at", "updated_at"):
        assert job[name]["format"] == "date-time"


def _aware_utc(text: str) -> datetime:
    """``text`` parsed; it must carry an offset, and be UTC."""
    assert text.endswith(("Z", "+00:00")), text
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None and value.utcoffset() == UTC.utcoffset(None)
    return value


def test_job_and_procedure_timestamps_are_utc_with_an_offset(
    client: TestClient, settings: Settings
) -> None:
    data = write_coco(settings.data_roots[0] / "new")
    before = datetime.now(UTC)
    submitted = client.post("/procedures", json=coco_job(data))
    assert submitted.status_code == 202, submitted.text
    job = wait_for(client, submitted.json()["job_id"])
    assert job["status"] == "succeeded", job
    created = _aware_utc(job["created_at"])
    assert abs((created - before).total_seconds()) < 60  # UTC, not local time read as UTC
    for name in ("updated_at", "started_at", "finished_at"):
        assert _aware_utc(job[name]) >= created
    assert job["progress"]["report"]["tracklets"] == 3  # typed, the same values
    assert job["params"]["root"] == "<data_root>/new"
    listed = client.get("/jobs").json()["jobs"][0]
    assert listed["created_at"] == job["created_at"]
    procedure = client.get("/procedures").json()
    items = procedure.get("procedures") or procedure.get("items") or []
    assert items, procedure
    _aware_utc(items[0]["indexed_at"])  # the procedures' format is the same
