"""Two replicas (a job runner and an index upkeep each, their own index folder) on one
PostgreSQL store: jobs on both, a delete, a forced re-index and a replica restarted in
the middle of a job. After one upkeep pass each (the stated delay) both hold exactly the
store's ids, no job ran twice, and neither is behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.databases import pg_schema_url
from helpers.indexing import FakeEncoder, write_csv, write_frames

from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.jobs import JobRunner
from polypindex.indexer.store import Store
from polypindex.service.upkeep import IndexUpkeep, ServingSink

pytestmark = pytest.mark.postgres
VERSION = FakeEncoder().version


@dataclass
class Replica:
    store: Store
    upkeep: IndexUpkeep
    runner: JobRunner


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


def _replica(url: str, root: Path, data: Path, lease_s: float = 60.0) -> Replica:
    store = Store(url)
    index = open_or_rebuild(root, store, VERSION, FakeEncoder.dim)
    upkeep = IndexUpkeep(store, root, VERSION, FakeEncoder.dim, index, refresh_s=0.0)
    runner = JobRunner(store, root, FakeEncoder(), [data], poll_s=0.05, sink=ServingSink(upkeep))
    runner.lease_s = lease_s
    return Replica(store, upkeep, runner)


def _job(data: Path, uid: str, **extra: object) -> dict[str, object]:
    return {
        "folder": str(data / uid),
        "detections": str(data / f"{uid}.csv"),
        "uid": uid,
        "min_tracklet_length": 3,
        **extra,
    }


def _held(r: Replica) -> list[int]:
    assert r.upkeep.index is not None
    return sorted(int(i) for i in r.upkeep.index.ids())


def test_two_replicas_answer_what_the_store_holds(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for uid in ("P1", "P2", "P3"):
        write_frames(data / uid, 8)
        write_csv(data / f"{uid}.csv", 8)
    a = _replica(pg_url, tmp_path / "a", data)
    b = _replica(pg_url, tmp_path / "b", data)
    replicas = [a, b]
    try:
        # jobs on both
        a.runner.submit("frames", _job(data, "P1"))
        b.runner.submit("frames", _job(data, "P2"))
        assert a.runner.run_one() is not None and b.runner.run_one() is not None
        # B re-indexes P1 with force, then A deletes P2
        before = set(a.store.tracklet_ids_for_procedure("P1"))
        b.runner.submit("frames", _job(data, "P1", force=True))
        forced = b.runner.run_one()
        assert forced is not None and forced.status == "succeeded", forced
        assert before.isdisjoint(a.store.tracklet_ids_for_procedure("P1"))
        a.upkeep.deleted(a.store.delete_procedure("P2"))
        # A takes a job and dies in the middle of it; its restart must wait out the lease
        job = a.runner.submit("frames", _job(data, "P3"))
        assert a.runner._claim() == job.id
        a.upkeep.stop()
        a.store.close()
        replicas.remove(a)
        a = _replica(pg_url, tmp_path / "a", data, lease_s=0.5)
        replicas.append(a)
        assert a.runner.recover() == 0 and a.runner.run_one() is None  # the lease holds
        time.sleep(0.6)
        assert a.runner.recover() == 1
        done = a.runner.run_one()
        assert done is not None and done.status == "succeeded" and done.id == job.id
        assert b.runner.run_one() is None  # nothing left for B: it ran no job twice
        # one upkeep pass each: both answer what the store holds
        for r in replicas:
            r.upkeep.step()
        stored = sorted(int(i) for i in a.store.tracklet_ids(VERSION))
        assert stored and _held(a) == _held(b) == stored
        for r in replicas:
            behind = r.upkeep.behind()
            assert behind is not None and behind.changes == 0
        uids = sorted(p.uid for p in a.store.list_procedures(VERSION))
        assert uids == ["P1", "P3"]
    finally:
        for r in replicas:
            r.runner.stop()
            r.upkeep.stop()
            r.store.close()
