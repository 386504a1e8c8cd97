"""Crash safety: SIGKILL an indexing process at random points, restart, resume.

Each trial runs ``crash_worker.py`` on the same store (re-indexing a few
procedures with ``force``, deleting one, resuming the rest), kills it with
SIGKILL after a seeded random delay, then checks that the FAISS index opened
from the snapshot (with its catch-up) holds exactly the database's ids, and
that every procedure is either fully in or fully out, never duplicated. A last
run without a kill must finish the batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import subprocess_env
from helpers.indexing import write_csv, write_frames
from sqlalchemy import text

from polypindex.indexer.generations import generation_dir, open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import IndexNotReadyError

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("crash_worker.py")
TRIALS = int(os.environ.get("POLYPINDEX_CRASH_TRIALS", "20"))
N_PROCEDURES = 6
TRACKLETS_PER_PROCEDURE = 2
VERSION = "fake-v1"


def _check(store: Store, index_dir: Path) -> dict[str, int]:
    gen = generation_dir(index_dir, VERSION)
    with contextlib.suppress(IndexNotReadyError):  # what the kill left: clean, or refused
        VectorIndex.load(gen)
    index = open_or_rebuild(index_dir, store, VERSION, 16, save=True)
    db_ids = store.tracklet_ids(VERSION).tolist()
    faiss_ids = index.ids().tolist()
    assert len(faiss_ids) == len(set(faiss_ids)), "duplicated ids in the index"
    assert sorted(faiss_ids) == db_ids, "the index and the database disagree"
    assert sorted(VectorIndex.load(gen).ids().tolist()) == db_ids
    counts: dict[str, int] = {}
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.uid, p.n_tracklets, COUNT(t.id) FROM procedures p "
                "LEFT JOIN tracklets t ON t.procedure_id = p.id GROUP BY p.uid, p.n_tracklets"
            )
        ).all()
    for uid, declared, actual in rows:
        assert declared == actual == TRACKLETS_PER_PROCEDURE, f"{uid} is half-indexed"
        counts[uid] = actual
    assert sum(counts.values()) == len(db_ids)
    return counts


class Zygote:
    """The worker process that forks one child per trial (see crash_worker.py)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.runs = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(OMP_NUM_THREADS="1"),
        )
        assert self._line() == "zygote"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the crash worker died"
        return line

    def run(self, cfg: dict[str, object], kill_after: float | None) -> list[str]:
        """One batch in a child; SIGKILL it ``kill_after`` s after it is ready. Returns its steps."""
        assert self.proc.stdin is not None
        self.runs += 1
        log = self.log_dir / f"run{self.runs}.log"
        self.proc.stdin.write(json.dumps({**cfg, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        pid = int(self._line().split()[1])
        if kill_after is not None:
            deadline = time.monotonic() + 30
            while "ready" not in (log.read_text() if log.exists() else ""):
                assert time.monotonic() < deadline, "the child never got ready"
                time.sleep(0.005)
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, _, status = self._line().split()
        if kill_after is None:
            assert int(status) == 0, f"the batch failed (status {status})"
        return log.read_text().splitlines() if log.exists() else []

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_sigkill_at_random_points_never_leaves_half_or_duplicated_procedures(
    tmp_path: Path,
) -> None:
    rng = random.Random(1234)
    folders = [write_frames(tmp_path / f"frames{i}", 8) for i in range(2)]
    csv = write_csv(tmp_path / "d.csv", 8)
    procedures = [[f"P{i}", str(folders[i % 2]), str(csv)] for i in range(N_PROCEDURES)]
    uids = [p[0] for p in procedures]
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    index_dir = tmp_path / "index"
    store = Store(db_url)
    zygote = Zygote(tmp_path)
    last_steps: Counter[str] = Counter()
    trials = 0
    while sum(n for step, n in last_steps.items() if step != "finished") < TRIALS:
        trials += 1
        assert trials <= 2 * TRIALS, f"too few kills landed mid-batch: {dict(last_steps)}"
        cfg = {
            "db_url": db_url,
            "index_dir": str(index_dir),
            "procedures": procedures,
            "force": rng.sample(uids, 3),
            "delete": rng.choice([None, *uids]),
            "sleep": 0.06,
        }
        steps = zygote.run(cfg, kill_after=rng.uniform(0.0, 0.35))
        last_steps[steps[-1].split()[0]] += 1
        _check(store, index_dir)
    cfg.update(force=[], delete=None, sleep=0.0)
    steps = zygote.run(cfg, kill_after=None)
    zygote.close()
    assert steps[-1] == "finished"
    assert sorted(_check(store, index_dir)) == uids  # the batch resumed to the end
    store.close()
    # the kills landed at different points (printed for the record, e.g. with -s)
    print(f"last step before SIGKILL over {trials} trials: {dict(last_steps)}")
    assert len(last_steps) >= 3


@pytest.mark.postgres
def test_sigkill_on_postgres(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(99)
    folder = write_frames(tmp_path / "frames", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    procedures = [[f"Q{i}", str(folder), str(csv)] for i in range(4)]
    index_dir = tmp_path / "index"
    store = Store(pg_url)
    zygote = Zygote(tmp_path)
    for _ in range(5):
        cfg = {
            "db_url": pg_url,
            "index_dir": str(index_dir),
            "procedures": procedures,
            "force": rng.sample([p[0] for p in procedures], 1),
            "delete": None,
            "sleep": 0.02,
        }
        zygote.run(cfg, kill_after=rng.uniform(0.0, 0.3))
        _check(store, index_dir)
    cfg.update(force=[], sleep=0.0)
    assert zygote.run(cfg, kill_after=None)[-1] == "finished"
    zygote.close()
    assert sorted(_check(store, index_dir)) == ["Q0", "Q1", "Q2", "Q3"]
    store.close()
