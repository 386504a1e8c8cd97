"""Jobs are claimed with a lease: a restarted (or second) runner never runs a job another
live runner holds, and takes back only a job whose lease expired."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.indexing import FakeEncoder, write_csv, write_frames

from polypindex.indexer import jobs
from polypindex.indexer.job_store import JobStore
from polypindex.indexer.jobs import JobRunner
from polypindex.indexer.store import Store


@pytest.fixture
def setup(db_url: str, tmp_path: Path) -> Iterator[tuple[Store, Path, Path]]:
    data = tmp_path / "data"
    write_frames(data / "proc", 8)
    write_csv(data / "d.csv", 8)
    store = Store(db_url)
    yield store, data, tmp_path / "index"
    store.close()


def _job(data: Path) -> dict[str, object]:
    return {
        "folder": str(data / "proc"),
        "detections": str(data / "d.csv"),
        "uid": "P",
        "min_tracklet_length": 3,
    }


def _runner(store: Store, data: Path, index: Path, lease_s: float) -> JobRunner:
    runner = JobRunner(store, index, FakeEncoder(), [data], poll_s=0.05)
    runner.lease_s = lease_s
    return runner


def test_a_held_lease_is_left_alone_and_an_expired_one_taken_back(
    setup: tuple[Store, Path, Path],
) -> None:
    store, data, index = setup
    a, b = _runner(store, data, index, 60.0), _runner(store, data, index, 60.0)
    job = a.submit("frames", _job(data))
    assert a._claim() == job.id
    assert b.recover() == 0 and b._claim() is None  # A holds it
    table = JobStore(store)
    assert table.heartbeat(job.id, a.worker_name)
    assert not table.heartbeat(job.id, b.worker_name)  # B holds no lease on it
    time.sleep(0.3)
    b.lease_s = 0.2  # A stopped renewing for longer than a lease: it is gone
    assert b.recover() == 1
    assert b.run_one() is not None
    done = b.get(job.id)
    assert done.status == "succeeded" and done.worker == b.worker_name
    assert not table.heartbeat(job.id, a.worker_name)  # A's lease is over


def test_a_restarted_runner_never_runs_the_job_another_one_runs(
    setup: tuple[Store, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runs a job longer than the lease (renewing it); B restarts meanwhile and keeps
    recovering: the job stays A's, runs once, and B runs nothing."""
    store, data, index = setup
    calls: list[str] = []
    real = jobs.index_sources

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.current_thread().name)
        time.sleep(1.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "index_sources", slow)
    a = _runner(store, data, index, 0.4)
    job = a.submit("frames", _job(data))
    a.start()
    try:
        deadline = time.monotonic() + 10
        while a.get(job.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        b = _runner(store, data, index, 0.4)
        b.start()
        try:
            while a.get(job.id).status == "running":
                assert time.monotonic() < deadline + 20
                assert b.get(job.id).worker == a.worker_name
                time.sleep(0.05)
        finally:
            b.stop()
    finally:
        a.stop()
    done = a.get(job.id)
    assert done.status == "succeeded" and done.worker == a.worker_name
    assert len(calls) == 1


@pytest.mark.postgres
def test_concurrent_claims_on_postgresql_take_each_job_once(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_frames(data / "proc", 8)
    write_csv(data / "d.csv", 8)
    stores = [Store(pg_url) for _ in range(4)]
    try:
        runners = [_runner(s, data, tmp_path / "index", 60.0) for s in stores]
        ids = {runners[0].submit("frames", _job(data)).id for _ in range(12)}
        claimed: list[str] = []
        lock = threading.Lock()

        def claim_all(runner: JobRunner) -> None:
            while (job_id := runner._claim()) is not None:
                with lock:
                    claimed.append(job_id)

        threads = [threading.Thread(target=claim_all, args=(r,)) for r in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == sorted(ids)
    finally:
        for s in stores:
            s.close()


def test_a_runner_whose_lease_was_taken_back_no_longer_writes_the_job(
    setup: tuple[Store, Path, Path],
) -> None:
    store, data, index = setup
    a, b = _runner(store, data, index, 0.2), _runner(store, data, index, 0.2)
    job = a.submit("frames", _job(data))
    assert a._claim() == job.id
    time.sleep(0.3)  # A hangs past its lease; B takes the job
    assert b.recover() == 1 and b._claim() == job.id
    a._set(job.id, status="failed", error="late")
    taken = b.get(job.id)
    assert taken.status == "running" and taken.worker == b.worker_name and taken.error is None
