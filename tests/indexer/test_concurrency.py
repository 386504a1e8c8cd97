"""Concurrency: searches keep answering while indexing writes; two indexer processes on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import subprocess_env
from helpers.indexing import TRACKLETS, FakeEncoder, write_csv, write_frames

from polypindex.indexer.generations import open_or_rebuild, sync_with_store
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.sources import frames_source
from polypindex.indexer.store import Store

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("crash_worker.py")


def test_searches_answer_while_a_job_indexes(db_url: str, tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "f", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    sources = [frames_source(folder, csv, uid=f"P{i}", config=TRACKLETS) for i in range(12)]
    index_dir = tmp_path / "index"
    writer_store, reader_store = Store(db_url), Store(db_url)
    encoder = FakeEncoder()
    index_sources(sources[:1], writer_store, index_dir, encoder, progress=False)
    index = open_or_rebuild(index_dir, reader_store, encoder.version, encoder.dim)
    query = np.ones(encoder.dim, dtype=np.float32)
    errors: list[BaseException] = []
    answered = reloaded = 0
    done = threading.Event()

    def write() -> None:
        try:
            index_sources(
                sources, writer_store, index_dir, encoder, progress=False, snapshot_every_s=0.0
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while not done.is_set() or answered < 5:
            # the service's loop: catch up with the store, search; and reopen the snapshot
            sync_with_store(index, reader_store)
            (hits,) = index.search(query, 3, encoder_version=encoder.version)
            assert hits and all(i in index for i, _ in hits)
            answered += 1
            if answered % 5 == 0:
                open_or_rebuild(index_dir, reader_store, encoder.version, encoder.dim)
                reloaded += 1
    except BaseException as exc:
        errors.append(exc)
    writer.join()
    assert errors == []
    assert answered >= 5 and reloaded >= 1
    sync_with_store(index, reader_store)
    assert sorted(index.ids().tolist()) == reader_store.tracklet_ids(encoder.version).tolist()
    assert len(index) == 24
    writer_store.close()
    reader_store.close()


@pytest.mark.postgres
def test_two_indexer_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "f", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    index_dir = tmp_path / "index"
    Store(pg_url).close()  # migrate once up front (concurrent upgrades are tested elsewhere)
    procs = []
    for name in ("A", "B"):
        cfg = {
            "db_url": pg_url,
            "index_dir": str(index_dir),
            "procedures": [[f"{name}{i}", str(folder), str(csv)] for i in range(5)],
            "force": [],
            "delete": None,
            "sleep": 0.01,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "--once", json.dumps(cfg)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(OMP_NUM_THREADS="1"),
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split()[-1] == "finished"
    store = Store(pg_url)
    assert len(store.list_procedures()) == 10 and store.count_tracklets() == 20
    # each process saved the snapshot it knew; opening catches up with the other's rows
    index = open_or_rebuild(index_dir, store, "fake-v1", 16)
    assert sorted(index.ids().tolist()) == store.tracklet_ids("fake-v1").tolist()
    store.close()
