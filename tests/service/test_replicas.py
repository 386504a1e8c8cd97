"""Two replicas on one store follow its change log: a forced re-index on one and a
delete on the other leave both holding exactly the store's ids after one upkeep pass
(the stated delay: ``index_refresh_seconds``), and each knows how far behind it is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.databases import BACKENDS, backend_url
from helpers.rows import random_row

from polypindex.indexer.generations import generation_dir, open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.indexer.vectors import VectorIndex
from polypindex.service.upkeep import IndexUpkeep

DIM, VERSION = 8, "enc-a"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for url in backend_url(request.param, tmp_path):
        s = Store(url)
        try:
            yield s
        finally:
            s.close()


def _rows(n: int, seed: int) -> list[TrackletRow]:
    rng = np.random.default_rng(seed)
    return [random_row(rng, DIM, f"seq/p{i}/0", 10 * i, 6) for i in range(n)]


def _replica(store: Store, root: Path) -> IndexUpkeep:
    index = open_or_rebuild(root, store, VERSION, DIM)
    return IndexUpkeep(store, root, VERSION, DIM, index, refresh_s=0.0)


def _held(upkeep: IndexUpkeep) -> list[int]:
    assert upkeep.index is not None
    return sorted(int(i) for i in upkeep.index.ids())


def _stored(store: Store) -> list[int]:
    return sorted(int(i) for i in store.tracklet_ids(VERSION))


def test_a_forced_re_index_on_one_and_a_delete_on_the_other_reach_both(
    store: Store, tmp_path: Path
) -> None:
    store.replace_procedure("P1", "ds", "a", VERSION, _rows(3, seed=1))
    p2 = store.replace_procedure("P2", "ds", "b", VERSION, _rows(2, seed=2))
    a, b = _replica(store, tmp_path / "a"), _replica(store, tmp_path / "b")
    assert _held(a) == _held(b) == _stored(store)
    # B re-indexes P1 with force (its own index is updated at once) ...
    old = store.tracklet_ids_for_procedure("P1")
    rows = _rows(3, seed=3)
    new = store.replace_procedure("P1", "ds", "a", VERSION, rows)
    b.replaced(old, new, np.stack([r.embedding for r in rows]))
    # ... then A deletes P2 (same tracklet count as before on A's side: counts would miss it)
    a.deleted(store.delete_procedure("P2"))
    lag = a.behind()
    assert lag is not None and lag.changes == 2 and lag.oldest_age_s >= 0
    assert set(new).isdisjoint(_held(a))  # A does not hold B's re-index yet
    a.step()
    b.step()
    assert _held(a) == _held(b) == _stored(store) == sorted(new)
    assert set(p2).isdisjoint(_held(b))
    for replica in (a, b):
        behind = replica.behind()
        assert behind is not None and behind.changes == 0 and behind.oldest_age_s == 0


def test_the_start_up_catch_up_is_written_to_the_snapshot(store: Store, tmp_path: Path) -> None:
    store.replace_procedure("P1", "ds", "a", VERSION, _rows(3, seed=1))
    first = open_or_rebuild(tmp_path, store, VERSION, DIM)
    assert len(first) == 3
    # another replica writes while this one is down
    store.replace_procedure("P2", "ds", "b", VERSION, _rows(4, seed=2))
    store.delete_procedure("P1")
    again = open_or_rebuild(tmp_path, store, VERSION, DIM)
    assert len(again) == 4
    infos = VectorIndex.read_infos(generation_dir(tmp_path, VERSION))
    assert infos is not None and infos["count"] == 4


def test_a_replica_too_far_behind_is_not_ready_until_it_catches_up(
    store: Store, tmp_path: Path
) -> None:
    store.replace_procedure("P1", "ds", "a", VERSION, _rows(3, seed=1))
    a = _replica(store, tmp_path / "a")
    a.max_behind = 1
    assert a.behind_problem() is None
    store.replace_procedure("P2", "ds", "b", VERSION, _rows(2, seed=2))  # by another replica
    assert a.behind_problem() is None  # one change behind: within the bound
    store.delete_procedure("P1")
    problem = a.behind_problem()
    assert problem is not None and "2 changes behind the store" in problem
    a.step()
    assert a.behind_problem() is None and _held(a) == _stored(store)
