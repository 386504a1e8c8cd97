"""polypindex.indexer.jobs: queued in the database, run in the background, failures say why, restarts recover."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.indexing import FakeEncoder, write_csv, write_frames

from polypindex.indexer.jobs import JobNotFoundError, JobRunner
from polypindex.indexer.sources import PathNotAllowedError
from polypindex.indexer.store import Store
from polypindex.model.core.errors import InvalidInputError


@pytest.fixture
def setup(db_url: str, tmp_path: Path) -> Iterator[tuple[JobRunner, Path]]:
    data = tmp_path / "data"
    write_frames(data / "proc", 8)
    write_csv(data / "d.csv", 8)
    store = Store(db_url)
    runner = JobRunner(store, tmp_path / "index", FakeEncoder(), [data], poll_s=0.05)
    yield runner, data
    runner.stop()
    store.close()


def _frames_job(data: Path, **extra: object) -> dict[str, object]:
    return {
        "folder": str(data / "proc"),
        "detections": str(data / "d.csv"),
        "uid": "P",
        "min_tracklet_length": 3,
        **extra,
    }


def test_a_job_runs_and_reports_progress(setup: tuple[JobRunner, Path]) -> None:
    runner, data = setup
    job = runner.submit("frames", _frames_job(data))
    assert job.status == "queued" and runner.list("queued") == [job]
    done = runner.run_one()
    assert done is not None and done.id == job.id and done.status == "succeeded", done
    assert done.progress["procedures_done"] == 1 and done.progress["tracklets"] == 2
    assert done.progress["report"]["tracklets"] == 2 and done.finished_at is not None
    assert runner.store.tracklet_ids_for_procedure("P")
    assert runner.run_one() is None


def test_refused_requests_write_nothing(setup: tuple[JobRunner, Path], tmp_path: Path) -> None:
    runner, data = setup
    outside = write_frames(tmp_path / "elsewhere", 2)
    with pytest.raises(PathNotAllowedError, match="outside the configured data roots"):
        runner.submit("frames", {**_frames_job(data), "folder": str(outside)})
    with pytest.raises(PathNotAllowedError):
        runner.submit("frames", {**_frames_job(data), "detections": str(data / ".." / "x.csv")})
    with pytest.raises(InvalidInputError, match="does not exist"):
        runner.submit("frames", {**_frames_job(data), "folder": str(data / "nope")})
    with pytest.raises(InvalidInputError, match="unknown job kind"):
        runner.submit("hl7", {})
    with pytest.raises(InvalidInputError, match=r"needs field\(s\) \['detections'\]"):
        runner.submit("video", {"video": str(data / "d.csv")})
    with pytest.raises(InvalidInputError, match=r"unknown field\(s\) \['speed'\]"):
        runner.submit("frames", _frames_job(data, speed=3))
    assert runner.list() == []
    with pytest.raises(JobNotFoundError):
        runner.get("nope")


def test_a_failed_job_says_why(setup: tuple[JobRunner, Path]) -> None:
    runner, data = setup
    (data / "d.csv").write_text("frame,x,y\n1,2,3\n")  # broken after submission
    job = runner.submit("frames", _frames_job(data))
    (data / "d.csv").write_text("frame,x,y\n1,2,3\n")
    failed = runner.run_one()
    assert failed is not None and failed.id == job.id and failed.status == "failed"
    assert failed.error is not None and "InvalidInputError" in failed.error
    assert "d.csv" in failed.error and "lacks column" in failed.error
    assert runner.store.count_tracklets() == 0


def test_jobs_survive_a_restart_and_run_in_the_background(setup: tuple[JobRunner, Path]) -> None:
    runner, data = setup
    job = runner.submit("frames", _frames_job(data))
    # a process claimed it, then died
    runner._claim()
    assert runner.get(job.id).status == "running"
    restarted = JobRunner(
        runner.store, runner.index_dir, FakeEncoder(), runner.data_roots, poll_s=0.05
    )
    restarted.lease_s = 0.5  # taken back once the dead process's lease expired
    restarted.start()
    try:
        deadline = time.monotonic() + 30
        while restarted.get(job.id).status != "succeeded":
            assert time.monotonic() < deadline, restarted.get(job.id)
            time.sleep(0.05)
    finally:
        restarted.stop()
    assert restarted.get(job.id).worker == restarted.worker_name
