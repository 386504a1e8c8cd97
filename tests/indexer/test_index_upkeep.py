"""Removals as tombstones, compaction beside the live index, id-selector filters and
batched queries of :class:`VectorIndex`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from polypindex.indexer.vectors import IndexPolicy, VectorIndex

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exhaustive(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vectors @ q), kind="stable")[:k]
    return ids[order].tolist()


@pytest.mark.parametrize("kind", ["flat_ip", "hnsw_ip"])
def test_removals_are_tombstones_until_compaction(tmp_path: Path, kind: str) -> None:
    index = VectorIndex(DIM, "v", kind=kind, policy=IndexPolicy(hnsw_m=8))
    index.background_upkeep = True  # nothing compacts inline
    vectors = _unit(200, seed=1)
    ids = np.arange(1, 201, dtype=np.int64)
    index.add(ids, vectors)
    gone = ids[:50]
    assert index.remove(gone) == 50 and index.remove(gone) == 0
    assert len(index) == 150 and index.held == 200 and index.tombstones.tolist() == gone.tolist()
    assert not set(index.ids().tolist()) & set(gone.tolist())
    for q in vectors[:50]:  # the removed vectors themselves never come back
        assert not {i for i, _ in index.search(q, 10)[0]} & set(gone.tolist())
    index.save(tmp_path / "g")  # tombstones travel in the sidecar
    loaded = VectorIndex.load(tmp_path / "g")
    assert len(loaded) == 150 and loaded.tombstones.tolist() == gone.tolist()
    assert index.needs_compaction() and index.compact()
    assert len(index) == 150 and index.held == 150 and index.tombstones.size == 0
    assert sorted(index.ids().tolist()) == ids[50:].tolist()
    assert index.search(vectors[60], 1)[0][0][0] == 61


def test_inline_mode_compacts_at_once() -> None:
    index = VectorIndex(DIM, "v")
    index.add(np.arange(1, 11, dtype=np.int64), _unit(10, seed=2))
    index.remove([3, 4])
    assert index.held == 8 and index.tombstones.size == 0


def test_compaction_runs_beside_searches_and_adds() -> None:
    policy = IndexPolicy(approximate_threshold=1000, hnsw_m=8)
    index = VectorIndex(DIM, "v", kind=None, policy=policy)
    index.background_upkeep = True
    vectors = _unit(3000, seed=3)
    ids = np.arange(1, 3001, dtype=np.int64)
    index.add(ids[:800], vectors[:800])  # exact
    index.add(ids[800:1500], vectors[800:1500])  # now past the threshold: still exact ...
    assert index.kind == "flat_ip" and index.needs_compaction()  # ... until compacted
    index.remove(ids[:100])
    stop, errors = threading.Event(), []

    def searching() -> None:
        try:
            while not stop.is_set():
                for hits in index.search(vectors[100:110], 5):
                    assert hits and all(i > 100 for i, _ in hits)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def adding() -> None:
        for start in range(1500, 3000, 100):
            index.add(ids[start : start + 100], vectors[start : start + 100])

    threads = [threading.Thread(target=searching), threading.Thread(target=adding)]
    for t in threads:
        t.start()
    assert index.compact()
    threads[1].join()
    stop.set()
    threads[0].join()
    assert not errors
    assert index.kind == "hnsw_ip" and index.tombstones.size == 0
    assert sorted(index.ids().tolist()) == ids[100:].tolist()  # adds made meanwhile kept
    found = [index.search(v, 1)[0][0][0] for v in vectors[2900:3000]]
    assert found == ids[2900:3000].tolist()


@pytest.mark.parametrize("kind", ["flat_ip", "hnsw_ip"])
@pytest.mark.parametrize("n_allowed", [7, 3000])
def test_allowed_ids_return_k_of_them_without_widening(kind: str, n_allowed: int) -> None:
    index = VectorIndex(DIM, "v", kind=kind, policy=IndexPolicy(hnsw_m=16, hnsw_ef_search=128))
    vectors = _unit(5000, seed=4)
    ids = np.arange(1, 5001, dtype=np.int64)
    index.add(ids, vectors)
    q = vectors[0]
    if n_allowed <= 2048 or kind == "flat_ip":  # the least similar ones: scored exactly
        picked = np.argsort(vectors @ q, kind="stable")[:n_allowed]
    else:  # a large filter on HNSW is approximate like any HNSW search
        picked = np.random.default_rng(0).choice(len(ids), n_allowed, replace=False)
    allowed = ids[picked]
    hits = index.search(q, 5, exclude_ids=[int(allowed[0])], allowed_ids=allowed)[0]
    keep = np.isin(ids, allowed[1:])
    want = _exhaustive(vectors[keep], ids[keep], q, 5)
    got = [i for i, _ in hits]
    assert len(got) == 5 and set(got) <= set(allowed[1:].tolist())
    if kind == "flat_ip" or n_allowed <= 2048:
        assert got == want
    else:
        assert len(set(got) & set(want)) >= 4


def test_a_batch_is_searched_as_each_query_alone() -> None:
    index = VectorIndex(DIM, "v", kind="hnsw_ip", policy=IndexPolicy(hnsw_m=8))
    vectors = _unit(500, seed=5)
    index.add(np.arange(1, 501, dtype=np.int64), vectors)
    queries = _unit(8, seed=6)
    together = index.search(queries, 5)
    assert together == [index.search(q, 5)[0] for q in queries]
