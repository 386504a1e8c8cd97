"""SIGKILL during compaction and snapshot saves: nothing lost, index ≡ store.

Each trial runs ``compaction_crash_worker.py`` on one store (HNSW index; it deletes a
procedure, adds one, compacts beside the live index and saves, in a loop) and kills it
after a seeded random delay. The generation is then opened as the service opens it:
its snapshot either verifies (checksum) or is refused and rebuilt; either way the index
must hold exactly the store's ids, each with the store's vector. A few trials here;
``POLYPINDEX_COMPACTION_TRIALS=20`` for the full run (docs/search.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from helpers import subprocess_env

from polypindex.indexer.generations import generation_dir, open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import verify_snapshot
from polypindex.indexer.vectors.core import cpu_backend

WORKER = Path(__file__).with_name("compaction_crash_worker.py")
TRIALS = int(os.environ.get("POLYPINDEX_COMPACTION_TRIALS", "3"))
VERSION = "fake-v1"
DIM = 16


def _check(store: Store, index_dir: Path) -> bool:
    """Index ≡ store after reopening; whether the snapshot left by the kill verified."""
    verified = verify_snapshot(generation_dir(index_dir, VERSION)) is None
    index = open_or_rebuild(index_dir, store, VERSION, DIM)
    stored_ids = store.tracklet_ids(VERSION)
    held = index.ids()
    assert len(held) == len(set(held.tolist())), "duplicated ids"
    assert sorted(held.tolist()) == stored_ids.tolist(), "the index and the store disagree"
    ids, vectors = store.embeddings_for_ids(stored_ids.tolist())
    got_ids, got = cpu_backend(index._backend).vectors_for(ids)
    assert got_ids.tolist() == ids.tolist(), "vectors lost"
    want = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    return verified


def test_sigkill_during_compaction_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    index_dir = tmp_path / "index"
    rnd = random.Random(1234)
    verified = 0
    steps_seen = 0
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), url, str(index_dir), str(trial)],
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(OMP_NUM_THREADS="1"),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.05, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        steps_seen += out.count("step")
        store = Store(url)
        try:
            verified += _check(store, index_dir)
        finally:
            store.close()
    assert steps_seen > 0, "the worker never got through one compaction"
    print(f"{TRIALS} trials, {steps_seen} compactions, {verified} snapshots verified as left")
