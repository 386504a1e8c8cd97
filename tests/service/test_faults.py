"""Honest errors under faults (issue 11): a full disk, a read-only store, a database
error carrying SQL, concurrent deletes, NUL bytes on PostgreSQL.

Before: a full disk left the job "running" until a restart (marking it failed also
failed) and a ``.tmp`` file behind; a 503 carried raw SQL and its bound parameters;
of 10 simultaneous deletes of one procedure up to 7 answered 200; on PostgreSQL a NUL
in ``procedure_uids``, ``DELETE /procedures/...`` or ``GET /jobs/...`` was a 500.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.databases import pg_schema_url
from helpers.indexing import write_coco
from helpers.rows import random_row
from helpers.service_api import assert_error
from helpers.service_jobs import coco_job, job_client, wait_for
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from polypindex.indexer.faults import public_message, storage_fault
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ProcedureNotFoundError
from polypindex.service.settings import Settings

SQL_ERROR = OperationalError(
    "SELECT tracklets.id FROM tracklets WHERE tracklets.id = ?", {"id": 424242}, Exception("boom")
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    home = tmp_path / "home"
    if request.param == "sqlite":
        yield Settings(home=home, index_refresh_seconds=0)
    else:
        for url in pg_schema_url():
            yield Settings(home=home, database_url=url, index_refresh_seconds=0)


client = pytest.fixture(job_client, name="client")


def submit_coco(client: TestClient, settings: Settings, name: str = "d") -> str:
    data = write_coco(settings.data_roots[0] / name)
    r = client.post("/procedures", json=coco_job(data))
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def no_internals(text: str, *paths: Path) -> None:
    for needle in ("SELECT", "[SQL", "[parameters", "424242", "sqlalche.me"):
        assert needle not in text, text
    for p in paths:
        assert str(p) not in text, text


# -- a full disk ----------------------------------------------------------------------------


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic file write (index snapshots, sidecars, thumbnails) fails with ENOSPC
    after writing its temporary file, as on a disk that filled up."""
    real_replace = os.replace

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if str(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_a_full_disk_fails_the_job_naming_it_and_leaves_no_tmp(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_disk(monkeypatch)
    job = wait_for(client, submit_coco(client, settings), retry_errors=True)
    assert job["status"] == "failed", job
    assert "disk_full" in job["error"] and "no space left" in job["error"], job["error"]
    no_internals(str(job), settings.home)
    assert [p for p in settings.home.rglob("*.tmp")] == []
    assert client.get("/healthz").status_code == 200  # the process lives on


def test_a_job_is_marked_failed_even_when_writing_that_fails_at_first(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = client.app.state.jobs  # type: ignore[attr-defined]
    runner.retry_s = 0.01
    real_set, refusals = runner._set, {"n": 0}

    def flaky_set(job_id: str, **values: Any) -> None:
        if values.get("status") == "failed" and refusals["n"] < runner.finish_attempts + 2:
            refusals["n"] += 1  # more refusals than _finish retries: the loop must retry
            raise SQL_ERROR
        real_set(job_id, **values)

    monkeypatch.setattr(runner, "_set", flaky_set)
    data = write_coco(settings.data_roots[0] / "bad", corrupt=True)
    r = client.post("/procedures", json=coco_job(data))
    job = wait_for(client, r.json()["job_id"], retry_errors=True)
    assert job["status"] == "failed" and refusals["n"] == runner.finish_attempts + 2, job
    assert runner.unrecorded == {}


def test_a_full_database_on_a_delete_is_507(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]

    def full(uid: str, *_a: Any) -> Any:
        raise OperationalError(
            "DELETE FROM procedures WHERE procedures.uid = ?",
            (uid,),
            sqlite3.OperationalError("database or disk is full"),
        )

    monkeypatch.setattr(store, "delete_procedure", full)
    r = client.delete("/procedures/ds:424242")
    message = assert_error(r, 507, "insufficient_storage", "no space left")
    no_internals(r.text, settings.home)
    assert "DELETE" not in message
    assert client.get("/healthz").status_code == 200


# -- a read-only store ----------------------------------------------------------------------


def test_a_read_only_store_is_503_and_the_process_lives(
    client: TestClient, settings: Settings
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PRAGMA query_only is SQLite's read-only switch")
    store = client.app.state.store  # type: ignore[attr-defined]
    event.listen(store.engine, "connect", lambda c, _r: c.execute("PRAGMA query_only=ON"))
    store.engine.dispose()  # new connections: read-only
    data = write_coco(settings.data_roots[0] / "ro")
    r = client.post("/procedures", json=coco_job(data))
    message = assert_error(r, 503, "store_read_only", "read-only")
    no_internals(message, settings.home)
    assert_error(client.delete("/procedures/ds:001"), 404, "procedure_not_found")
    assert client.get("/healthz").status_code == 200


def test_immutable_store_files_are_503_not_a_crash(client: TestClient, settings: Settings) -> None:
    """The SQLite files made immutable under a running service (``chattr +i``; root on a
    file system that supports it, else skipped): before, a 500 (and SIGBUS reports)."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite files")
    files = sorted(str(f) for f in settings.index_dir.glob("*.db*"))
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *files]).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        data = write_coco(settings.data_roots[0] / "imm")
        body = coco_job(data)
        for _ in range(3):
            r = client.post("/procedures", json=body)
            message = assert_error(r, 503, "store_read_only")
            no_internals(message, settings.home)
        assert client.get("/healthz").status_code == 200
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def test_sqlite_memory_maps_nothing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
    finally:
        store.close()


# -- database errors never show SQL ---------------------------------------------------------


def test_a_database_error_is_503_without_sql(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]

    def broken(*_a: Any, **_k: Any) -> Any:
        raise SQL_ERROR

    monkeypatch.setattr(store, "get_tracklet", broken)
    monkeypatch.setattr(store, "get_tracklets", broken)
    r = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}})
    message = assert_error(r, 503, "store_unavailable", "database")
    no_internals(r.text)
    assert "OperationalError" in message or "Exception" in message


def test_public_message_rules() -> None:
    roots = [Path("/srv/data"), Path("/mnt/videos")]
    text = "at /srv/data/coco/a.json and /mnt/videos/v.mp4 and /etc/secret/key: " + str(SQL_ERROR)
    out = public_message(text, roots)
    assert "<data_root>/coco/a.json" in out and "<data_root:2>/v.mp4" in out
    assert ".../key" in out and "/etc/secret" not in out and "SELECT" not in out
    assert public_message("see GET /healthz and GET /jobs/abc", roots) == (
        "see GET /healthz and GET /jobs/abc"
    )
    assert storage_fault(OSError(errno.ENOSPC, "x")).kind == "disk_full"  # type: ignore[union-attr]
    assert storage_fault(RuntimeError("1249842 requested and 0 written")).kind == "disk_full"  # type: ignore[union-attr]
    assert storage_fault(ValueError("x")) is None


# -- concurrent deletes ---------------------------------------------------------------------


def _store_with_procedure(url: str) -> Store:
    store = Store(url)
    rng = np.random.default_rng(0)
    rows = [random_row(rng, 8, f"p/t{j}", 10 * j, 5) for j in range(4)]
    store.replace_procedure("p", "ds", "synthetic", "v1", rows)
    return store


def test_exactly_one_of_concurrent_deletes_succeeds(settings: Settings) -> None:
    stores = [_store_with_procedure(settings.database_url)]
    stores += [Store(settings.database_url) for _ in range(9)]
    barrier, results = threading.Barrier(len(stores)), []

    def delete(store: Store) -> None:
        barrier.wait()
        try:
            results.append(len(store.delete_procedure("p")))
        except ProcedureNotFoundError:
            results.append(-1)

    threads = [threading.Thread(target=delete, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert sorted(results) == [-1] * 9 + [4], results


def test_concurrent_http_deletes_answer_one_200(client: TestClient, settings: Settings) -> None:
    job = wait_for(client, submit_coco(client, settings), retry_errors=True)
    assert job["status"] == "succeeded", job
    store = client.app.state.store  # type: ignore[attr-defined]
    uid = sorted(p.uid for p in store.list_procedures())[0]
    barrier, codes = threading.Barrier(10), []

    def delete() -> None:
        barrier.wait()
        codes.append(client.delete(f"/procedures/{uid}").status_code)

    threads = [threading.Thread(target=delete) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [200] + [404] * 9, codes


# -- NUL bytes (a 500 on PostgreSQL before) -------------------------------------------------


def test_nul_bytes_are_422_on_every_backend(client: TestClient) -> None:
    r = client.post(
        "/search", json={"query": {"embedding": [1.0] * 16}, "procedure_uids": ["a\x00"]}
    )
    assert_error(r, 422, "validation_error", "body.procedure_uids.0")
    assert_error(client.delete("/procedures/a%00"), 422, "validation_error", "path.uid")
    assert_error(client.get("/jobs/a%00"), 422, "validation_error", "path.job_id")
