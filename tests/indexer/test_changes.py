"""polypindex.indexer.store_changes: every write to a procedure is one numbered change,
in the write's own transaction; a rolled-back or refused write logs nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers.rows import random_row

from polypindex.indexer.store import Store
from polypindex.indexer.store_changes import ChangeLog, record_change
from polypindex.indexer.tables import TrackletRow
from polypindex.model.core.errors import ConflictError, InvalidInputError

DIM = 8


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


def _rows(n: int, seed: int = 0) -> list[TrackletRow]:
    rng = np.random.default_rng(seed)
    return [random_row(rng, DIM, f"seq/p{i}/0", 10 * i, 6) for i in range(n)]


def test_writes_re_indexes_and_deletes_are_numbered_changes(store: Store) -> None:
    log = ChangeLog(store)
    assert log.latest() == 0 and log.after(0) == []
    first = store.replace_procedure("P1", "ds", "a", "enc-a", _rows(3))
    other = store.replace_procedure("P2", "ds", "b", "enc-a", _rows(2, seed=1))
    again = store.replace_procedure("P1", "ds", "a", "enc-a", _rows(2, seed=2))  # force
    removed = store.delete_procedure("P2")
    changes = log.after(0)
    assert [c.kind for c in changes] == ["written", "written", "replaced", "deleted"]
    assert [c.uid for c in changes] == ["P1", "P2", "P1", "P2"]
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4 and log.latest() == seqs[-1]
    assert changes[0].added == tuple(first) and changes[0].removed == ()
    assert changes[2].added == tuple(again) and changes[2].removed == tuple(first)
    assert changes[3].removed == tuple(removed) == tuple(other)
    assert changes[3].encoder_version is None  # a delete of every version
    assert log.after(seqs[1]) == changes[2:]
    behind = log.behind(seqs[1])
    assert behind.changes == 2 and behind.latest == seqs[-1] and behind.oldest_age_s >= 0
    assert log.behind(seqs[-1]).changes == 0 and log.behind(seqs[-1]).oldest_age_s == 0


def test_changes_of_one_encoder_version_include_deletes_of_every_version(store: Store) -> None:
    store.replace_procedure("P1", "ds", "a", "enc-a", _rows(2))
    store.replace_procedure("P1", "ds", "a", "enc-b", _rows(2, seed=1))
    store.delete_procedure("P1", "enc-a")
    store.delete_procedure("P1")
    log = ChangeLog(store)
    assert [(c.kind, c.encoder_version) for c in log.after(0, "enc-b")] == [
        ("written", "enc-b"),
        ("deleted", None),
    ]
    assert log.behind(0, "enc-a").changes == 3


def test_a_refused_write_logs_nothing(store: Store) -> None:
    log = ChangeLog(store)
    bad = _rows(2)
    bad[1] = random_row(np.random.default_rng(3), DIM + 1, "seq/p9/0", 0, 6)
    with pytest.raises(InvalidInputError):
        store.replace_procedure("P1", "ds", "a", "enc-a", bad)
    assert log.latest() == 0
    store.replace_procedure("P1", "ds", "a", "enc-a", _rows(2))
    latest = log.latest()
    # a writer that found P1 absent when it began meets another writer's copy: refused
    with pytest.raises(ConflictError, match="written by another indexer"):
        store.replace_procedure("P1", "ds", "mine", "enc-a", _rows(3, seed=4), if_absent=True)
    assert log.latest() == latest
    assert store.get_procedure("P1", "enc-a").source == "a"
    assert len(store.tracklet_ids_for_procedure("P1")) == 2


@pytest.mark.postgres
def test_changes_are_committed_in_number_order_on_postgresql(pg_url: str) -> None:
    """A write that drew its change number holds the next writer until it commits: a
    reader never sees a higher number committed before a lower one."""
    store = Store(pg_url)
    try:
        log = ChangeLog(store)
        other = threading.Thread(
            target=store.replace_procedure, args=("P2", "ds", "b", "enc-a", _rows(2))
        )
        with store.sessions.begin() as session:
            record_change(session, "written", "P1", "enc-a", [], [])
            session.flush()
            other.start()
            time.sleep(0.5)
            assert other.is_alive()  # waiting for this transaction's lock
            assert log.latest() == 0  # nothing committed out of order meanwhile
        other.join(10)
        assert [c.uid for c in log.after(0)] == ["P1", "P2"]
    finally:
        store.close()
