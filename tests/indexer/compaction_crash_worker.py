"""Child of ``test_compaction_crash.py``: deletes, adds, compacts and saves in a loop
until it is killed (``python compaction_crash_worker.py DB_URL INDEX_DIR SEED``)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.indexer.vectors import IndexPolicy

VERSION = "fake-v1"
DIM = 16
POLICY = IndexPolicy(approximate_threshold=100, hnsw_m=8)


def rows(rng: np.random.Generator, prefix: str, n: int) -> list[TrackletRow]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [
        TrackletRow(
            key=f"{prefix}/t{j}", start_frame=j, end_frame=j + 1, n_frames=2, embedding=v[j]
        )
        for j in range(n)
    ]


def main() -> None:
    url, index_dir, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    store = Store(url)
    index = open_or_rebuild(index_dir, store, VERSION, DIM, save=True, policy=POLICY)
    index.background_upkeep = True  # the service's mode: compaction only when asked
    print("ready", flush=True)
    for step in itertools.count():
        procedures = store.list_procedures(VERSION)
        if len(procedures) > 4:
            uid = procedures[int(rng.integers(len(procedures)))].uid
            index.remove(store.delete_procedure(uid))
        new = rows(rng, f"s{seed}/{step}", int(rng.integers(5, 30)))
        ids = store.replace_procedure(f"s{seed}/{step}", None, "synthetic", VERSION, new)
        index.add(np.asarray(ids, dtype=np.int64), np.stack([r.embedding for r in new]))
        index.compact(force=True)
        index.save()
        print(f"step {step}", flush=True)


if __name__ == "__main__":
    main()
