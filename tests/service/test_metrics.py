"""``GET /metrics``: request metrics by route and status, embedding and index search
seconds, index size per generation, job queue depth and failures; one registry per app."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from helpers.service_api import VERSION, MeanColourEncoder, Setup, frame, started
from prometheus_client.parser import text_string_to_metric_families

from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel
from polypindex.service.app import create_app
from polypindex.service.settings import Settings


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    all_samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_embedding_and_search_are_measured(setup: Setup) -> None:
    with started(setup.settings, MeanColourEncoder()) as client:
        before = samples(client)
        for _ in range(2):
            r = client.post("/search", json={"query": {"frames": [frame()]}, "k": 3})
            assert r.status_code == 200, r.text
        client.post("/search", json={"query": {"tracklet_id": 2**40}, "k": 3})  # a 404
        after = samples(client)
    assert (
        value(after, "polypindex_embedding_seconds_count")
        - value(before, "polypindex_embedding_seconds_count")
        == 2
    )
    assert (
        value(after, "polypindex_index_search_seconds_count")
        - value(before, "polypindex_index_search_seconds_count")
        >= 2
    )
    ok = {"handler": "/search", "method": "POST", "status": "200"}
    assert value(after, "http_requests_total", **ok) == 2
    assert value(after, "http_requests_total", **{**ok, "status": "404"}) == 1
    assert (
        value(after, "http_request_duration_seconds_count", handler="/search", method="POST") == 3
    )
    assert value(after, "process_resident_memory_bytes") > 0


def test_index_store_and_auth_gauges(setup: Setup) -> None:
    with started(setup.settings, MeanColourEncoder()) as client:
        s = samples(client)
    assert value(s, "polypindex_index_vectors", generation=VERSION) == len(setup.vectors)
    assert value(s, "polypindex_store_tracklets", encoder_version=VERSION) == len(setup.vectors)
    assert value(s, "polypindex_store_tracklets", encoder_version="old-v0") == 1
    assert value(s, "polypindex_auth_open") == 1  # no key, loopback


def _add_job(store: Store, job_id: str, status: str) -> None:
    now = datetime.now(UTC)
    with store.sessions.begin() as session:
        session.add(
            JobModel(
                id=job_id,
                kind="coco",
                status=status,
                params_json="{}",
                progress_json="{}",
                error="boom" if status == "failed" else None,
                created_at=now,
                updated_at=now,
            )
        )


def test_job_queue_depth_and_failures(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, run_jobs=False))
    app.state.encoder = MeanColourEncoder()
    with TestClient(app) as client:
        store = app.state.store
        for i, status in enumerate(["queued", "queued", "failed", "succeeded"]):
            _add_job(store, f"job-{i}", status)
        s = samples(client)
    assert value(s, "polypindex_job_queue_depth") == 2
    assert value(s, "polypindex_jobs", status="failed") == 1
    assert value(s, "polypindex_jobs", status="running") == 0


def test_many_apps_in_one_process_each_serve_their_metrics(tmp_path: Path) -> None:
    for i in range(3):
        app = create_app(Settings(home=tmp_path / str(i)))
        app.state.encoder = MeanColourEncoder()
        with TestClient(app) as client:
            client.get("/healthz")
            s = samples(client)
        assert value(s, "http_requests_total", handler="/healthz", method="GET", status="200") == 1
