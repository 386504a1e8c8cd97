"""Indexing over HTTP: ``POST /procedures``, ``GET /jobs``, ``DELETE /procedures/{uid}``.

A real SQLite store and FAISS index, the indexer's deterministic fake encoder
(numpy only) and tiny COCO datasets written here, inside the service's data root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.indexing import FakeEncoder, write_coco
from helpers.service_jobs import ServiceFakeEncoder, coco_job, job_client, job_settings, wait_for

from polypindex.indexer.store import Store
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

settings = pytest.fixture(job_settings, name="settings")
client = pytest.fixture(job_client, name="client")


def assert_error(r: Any, status: int, code: str, *needles: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


def search_ids(client: TestClient, vector: np.ndarray, k: int = 10) -> list[int]:
    r = client.post("/search", json={"query": {"embedding": vector.tolist()}, "k": k})
    assert r.status_code == 200, r.text
    return [hit["tracklet_id"] for hit in r.json()["results"]]


def test_a_coco_job_indexes_then_delete_removes(client: TestClient, settings: Settings) -> None:
    data = write_coco(settings.data_roots[0] / "new")
    r = client.post("/procedures", json=coco_job(data))
    assert r.status_code == 202, r.text
    submitted = r.json()
    assert r.headers["location"] == f"/jobs/{submitted['job_id']}"
    assert submitted["status"] in ("queued", "running", "succeeded")
    # shown relative to the data root, never as a server path (issue 11)
    assert submitted["params"]["root"] == "<data_root>/new"

    job = wait_for(client, submitted["job_id"])
    assert job["status"] == "succeeded", job
    assert job["error"] is None and job["finished_at"] is not None
    assert job["progress"]["report"]["tracklets"] == 3
    listed = client.get("/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [submitted["job_id"]]
    assert client.get("/jobs", params={"status": "failed"}).json()["jobs"] == []

    store = Store(settings.database_url)
    try:
        uids = [p.uid for p in store.list_procedures()]
        assert len(uids) == 2
        ids = {uid: store.tracklet_ids_for_procedure(uid) for uid in uids}
        vectors = {i: store.get_tracklet(i).embedding for v in ids.values() for i in v}
        assert sum(len(v) for v in ids.values()) == 3
        # /search finds the new tracklets: each one is its own nearest neighbour.
        for tid, vector in vectors.items():
            assert search_ids(client, vector)[0] == tid
        assert set(search_ids(client, next(iter(vectors.values())))) == set(vectors)

        gone_uid = next(uid for uid in uids if len(ids[uid]) == 2)
        r = client.delete(f"/procedures/{gone_uid}")
        assert r.status_code == 200, r.text
        assert r.json() == {"procedure_uid": gone_uid, "tracklets_removed": 2}
        # The delete itself synced the running index (before any search could refresh it).
        held = set(client.app.state.index.ids().tolist())  # type: ignore[attr-defined]
        assert held == set(vectors) - set(ids[gone_uid])
        assert store.tracklet_ids_for_procedure(gone_uid) == []
        assert gone_uid not in [p.uid for p in store.list_procedures()]
        kept = set(vectors) - set(ids[gone_uid])
        for tid in ids[gone_uid]:
            found = search_ids(client, vectors[tid])
            assert tid not in found and set(found) == kept
    finally:
        store.close()
    assert_error(client.delete(f"/procedures/{gone_uid}"), 404, "procedure_not_found", gone_uid)


def test_a_path_outside_the_data_roots_is_refused(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    outside = write_coco(tmp_path / "outside")
    message = assert_error(
        client.post("/procedures", json=coco_job(outside)), 403, "path_not_allowed", "root"
    )
    assert "outside" in message
    # the message names the field, never the path given or the server's roots (issue 11)
    assert str(outside) not in message and str(settings.data_roots[0]) not in message
    sneaky = settings.data_roots[0] / ".." / ".." / "outside"
    assert_error(client.post("/procedures", json=coco_job(sneaky)), 403, "path_not_allowed")
    assert client.get("/jobs").json()["jobs"] == []
    store = Store(settings.database_url)
    try:
        assert store.list_procedures() == [] and store.count_tracklets() == 0
    finally:
        store.close()


def test_bad_requests_are_422(client: TestClient, settings: Settings) -> None:
    data = write_coco(settings.data_roots[0] / "d")
    # One typed model per kind: these are schema errors now (issue 11), no longer
    # "invalid_input" from the job runner.
    assert_error(
        client.post("/procedures", json={"kind": "nope", "root": str(data)}),
        422,
        "validation_error",
        "nope",
    )
    assert_error(client.post("/procedures", json={"kind": "coco"}), 422, "validation_error", "root")
    assert_error(
        client.post("/procedures", json=coco_job(data, colour="red")),
        422,
        "validation_error",
        "colour",
    )
    assert_error(
        client.post("/procedures", json=coco_job(settings.data_roots[0] / "missing")),
        422,
        "invalid_input",
        "does not exist",
    )
    assert_error(client.get("/jobs", params={"status": "done"}), 422, "validation_error")
    assert client.get("/jobs").json()["jobs"] == []


def test_unknown_job_is_404(client: TestClient) -> None:
    assert_error(client.get("/jobs/0123abcd"), 404, "job_not_found", "0123abcd")


def test_unknown_procedure_is_404(client: TestClient) -> None:
    assert_error(client.delete("/procedures/ds:nope"), 404, "procedure_not_found", "ds:nope")


def test_a_failing_job_says_why(client: TestClient, settings: Settings) -> None:
    data = write_coco(settings.data_roots[0] / "bad", corrupt=True)
    r = client.post("/procedures", json=coco_job(data))
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert "002_0003.jpg" in job["error"], job["error"]
    store = Store(settings.database_url)
    try:  # the procedure with the corrupt frame is not half-written
        assert "ds:002" not in [p.uid for p in store.list_procedures()]
    finally:
        store.close()
    listed = client.get("/jobs", params={"status": "failed"}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job["job_id"]]


def test_no_runner_is_503(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, run_jobs=False)
    with TestClient(create_app(settings)) as c:  # no model file either
        assert_error(
            c.post("/procedures", json=coco_job(tmp_path / "data")), 503, "not_ready", "jobs"
        )
        assert_error(c.get("/jobs/x"), 503, "not_ready")


def test_data_roots_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLYPINDEX_DATA_ROOTS", json.dumps([str(tmp_path / "a"), "/srv/b"]))
    assert Settings(home=tmp_path).data_roots == [tmp_path / "a", Path("/srv/b")]
    monkeypatch.delenv("POLYPINDEX_DATA_ROOTS")
    assert Settings(home=tmp_path).data_roots == [tmp_path.resolve() / "data"]
    assert Settings(home=tmp_path).run_jobs is True


def test_a_job_left_running_by_a_dead_process_runs_after_a_restart(settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from polypindex.indexer.jobs import JobRunner
    from polypindex.indexer.tables import JobModel

    data = write_coco(settings.data_roots[0] / "again")
    store = Store(settings.database_url)
    try:  # a previous service queued and claimed it, then died an hour ago (lease expired)
        job = JobRunner(store, settings.index_dir, FakeEncoder(), settings.data_roots).submit(
            "coco", {"root": str(data), "min_tracklet_length": 3}
        )
        dead = datetime.now(UTC) - timedelta(hours=1)
        with store.sessions.begin() as session:
            session.execute(
                update(JobModel)
                .where(JobModel.id == job.id)
                .values(status="running", worker="dead", heartbeat_at=dead, updated_at=dead)
            )
    finally:
        store.close()
    app = create_app(settings)
    app.state.encoder = ServiceFakeEncoder()
    with TestClient(app) as c:
        done = wait_for(c, job.id)
    assert done["status"] == "succeeded", done
    assert done["progress"]["report"]["tracklets"] == 3
