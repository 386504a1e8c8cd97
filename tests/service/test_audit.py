"""The audit trail: every request to a write endpoint (allowed or refused) is one row —
who, what, target, when, status — written in one place (the request middleware); reads
are not audited. The library on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.auth import add_key, bearer
from helpers.databases import pg_schema_url, sqlite_url
from helpers.indexing import FakeEncoder, write_coco
from helpers.service_api import MeanColourEncoder, Setup, started

from polypindex.indexer.audit import AuditEntry, recent, record
from polypindex.indexer.keys import create_key, revoke_key
from polypindex.indexer.store import Store
from polypindex.service.settings import Settings

DELETE_ROUTE = "DELETE /procedures/{uid:path}"


def audit_rows(settings: Settings) -> list[AuditEntry]:
    with Store(settings.database_url) as store:
        return recent(store, 100)


def test_open_mode_writes_are_audited_as_open(setup: Setup) -> None:
    with started(setup.settings, MeanColourEncoder()) as client:
        before = len(audit_rows(setup.settings))
        r = client.delete("/procedures/proc/c", headers={"X-Request-ID": "req-delete-1"})
        assert r.status_code == 200
        client.post("/search", json={"query": {"tracklet_id": setup.red_id}, "k": 2})
        client.get("/healthz")
    rows = audit_rows(setup.settings)
    assert len(rows) == before + 1  # the search and the health check are reads: no rows
    row = rows[0]
    assert (row.actor, row.action, row.target, row.status) == (
        "open",
        DELETE_ROUTE,
        "uid=proc/c",
        200,
    )
    assert row.request_id == "req-delete-1" and row.at is not None


def test_refused_and_allowed_writes_name_the_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, auth="keys")
    reader, writer = add_key(settings, "reader", "read"), add_key(settings, "writer", "write")
    with started(settings, MeanColourEncoder()) as client:
        client.delete("/procedures/p1")
        client.delete("/procedures/p1", headers=bearer("pxk_forged"))
        client.delete("/procedures/p1", headers=bearer(reader))
        client.delete("/procedures/p1", headers=bearer(writer))
        client.post("/search", json={}, headers=bearer(reader))  # a read: not audited
    http = [r for r in audit_rows(settings) if r.action == DELETE_ROUTE]
    assert [(r.actor, r.status) for r in reversed(http)] == [
        ("anonymous", 401),
        ("invalid-key", 401),
        ("reader", 403),
        ("writer", 404),  # allowed, and the procedure does not exist
    ]
    assert {r.target for r in http} == {"uid=p1"}
    assert all(r.action != "POST /search" for r in audit_rows(settings))


class JobEncoder(FakeEncoder):
    def embed_tracklet(self, images: Any, boxes: Any) -> Any:  # pragma: no cover - unused
        raise AssertionError("not called")


@pytest.fixture
def job_client(tmp_path: Path) -> Iterator[tuple[TestClient, Settings, str]]:
    settings = Settings(home=tmp_path / "home", auth="keys", index_refresh_seconds=0)
    token = add_key(settings, "indexer", "write")
    with started(settings, JobEncoder()) as client:
        yield client, settings, token


def test_a_submitted_job_is_audited_with_its_location(
    job_client: tuple[TestClient, Settings, str],
) -> None:
    client, settings, token = job_client
    data = write_coco(settings.data_roots[0] / "new")
    body = {"kind": "coco", "root": str(data), "min_tracklet_length": 3}
    r = client.post("/procedures", json=body, headers=bearer(token))
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 20
    while client.get(r.headers["location"], headers=bearer(token)).json()["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (row,) = [a for a in audit_rows(settings) if a.action == "POST /procedures"]
    assert (row.actor, row.status, row.target) == ("indexer", 202, r.headers["location"])
    # polling GET /jobs/{id} needs the write scope but changes nothing: not audited
    assert all(not a.action.startswith("GET ") for a in audit_rows(settings))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    urls = [sqlite_url(tmp_path / "db")] if request.param == "sqlite" else pg_schema_url()
    for url in urls:  # one URL (the PostgreSQL schema is dropped after the test)
        with Store(url) as s:
            yield s


def test_the_trail_on_each_backend(store: Store) -> None:
    create_key(store, "k1", "admin", actor="test")
    revoke_key(store, "k1", actor="test")
    record(store, "k2", "DELETE /procedures/{uid:path}", "uid=" + "x" * 2000, 200, "r" * 500)
    record(store, "k2", "POST /procedures", "with\x00nul", 202)  # PostgreSQL text has no NUL
    rows = recent(store, 10)
    assert [r.action for r in rows] == [
        "POST /procedures",
        "DELETE /procedures/{uid:path}",
        "keys revoke",
        "keys create",
    ]
    assert rows[0].target == "with\ufffdnul"
    assert len(rows[1].target or "") == 512 and len(rows[1].request_id or "") == 128
    assert [r.id for r in recent(store, 2)] == [rows[0].id, rows[1].id]
