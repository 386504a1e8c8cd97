"""indexer.vector_index: exact search vs numpy, exclusion, atomic save/load, catch-up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.store import Store, TrackletRow
from indexer.vector_index import INDEX_FILE, SIDECAR_FILE, VectorIndex
from model.config import FragmentConfig, PreprocessConfig
from model.errors import EncoderMismatchError, IndexNotReadyError, InvalidInputError

DIM = 16


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exhaustive(
    db_ids: np.ndarray, db: np.ndarray, queries: np.ndarray, k: int
) -> list[list[tuple[int, float]]]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ db.T
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(int(db_ids[j]), float(row[j])) for j in order])
    return out


def _assert_same(got: list[list[tuple[int, float]]], want: list[list[tuple[int, float]]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-5)


def test_search_equals_exhaustive_numpy_search() -> None:
    ids = np.arange(100, 160, dtype=np.int64)
    db = _vectors(60)
    index = VectorIndex(DIM, "enc-a")
    index.add(ids, db * 3.0)  # unnormalised input is normalised
    assert len(index) == 60 and index.max_id == 159 and index.dim == DIM
    queries = np.random.default_rng(1).normal(size=(7, DIM)).astype(np.float32)
    _assert_same(index.search(queries, 5), _exhaustive(ids, db, queries, 5))
    # k larger than the index: everything, no -1 padding
    got = index.search(queries[:1], 500)
    assert len(got[0]) == 60 and all(i >= 0 for i, _ in got[0])


def test_exclusion() -> None:
    ids = np.arange(1, 31, dtype=np.int64)
    db = _vectors(30, seed=2)
    index = VectorIndex(DIM, "enc-a")
    index.add(ids, db)
    excluded = set(range(1, 26))
    (hits,) = index.search(db[0], 10, exclude_ids=excluded)
    assert len(hits) == 5 and not {i for i, _ in hits} & excluded
    keep = ~np.isin(ids, list(excluded))
    _assert_same([hits], _exhaustive(ids[keep], db[keep], db[:1], 10))
    (self_hit,) = index.search(db[0], 1)
    assert self_hit[0][0] == 1 and self_hit[0][1] == pytest.approx(1.0, abs=1e-5)


def test_add_validates_and_remove() -> None:
    index = VectorIndex(DIM, "enc-a")
    index.add(np.array([1, 2, 3]), _vectors(3))
    with pytest.raises(InvalidInputError, match="shape"):
        index.add(np.array([4]), np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="already"):
        index.add(np.array([3]), _vectors(1))
    with pytest.raises(InvalidInputError, match="zero"):
        index.add(np.array([5]), np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(EncoderMismatchError, match="enc-b"):
        index.add(np.array([6]), _vectors(1), encoder_version="enc-b")
    assert index.remove([2, 99]) == 1
    assert sorted(index.ids().tolist()) == [1, 3]
    assert index.search(np.ones((0, DIM), dtype=np.float32), 3) == []
    assert VectorIndex(DIM, "enc-a").search(_vectors(2), 3) == [[], []]


def test_save_load_round_trip(tmp_path: Path) -> None:
    ids = np.arange(10, 30, dtype=np.int64)
    db = _vectors(20, seed=4)
    pre, frag = PreprocessConfig(im_size=32), FragmentConfig(fragment_length=-1)
    index = VectorIndex(DIM, "enc-a", preprocess=pre, fragment=frag)
    index.add(ids, db)
    index.remove([29])
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        INDEX_FILE,
        SIDECAR_FILE,
    ]  # no temp left
    infos = json.loads((tmp_path / "idx" / SIDECAR_FILE).read_text())
    assert infos["encoder_version"] == "enc-a" and infos["dim"] == DIM and infos["count"] == 19
    assert infos["max_row_id"] == 29 and infos["kind"] == "flat_ip"
    assert infos["preprocess"]["im_size"] == 32 and infos["fragment"]["fragment_length"] == -1
    loaded = VectorIndex.load(tmp_path / "idx")
    assert (loaded.encoder_version, loaded.dim, len(loaded), loaded.max_id) == (
        "enc-a",
        DIM,
        19,
        29,
    )
    assert loaded.preprocess == pre and loaded.fragment == frag
    queries = _vectors(3, seed=5)
    _assert_same(loaded.search(queries, 4), index.search(queries, 4))

    with pytest.raises(IndexNotReadyError):
        VectorIndex.load(tmp_path / "missing")
    # a sidecar that does not describe the index file (an interrupted save) is refused
    infos["count"] = 3
    (tmp_path / "idx" / SIDECAR_FILE).write_text(json.dumps(infos))
    with pytest.raises(IndexNotReadyError, match="does not match"):
        VectorIndex.load(tmp_path / "idx")


def _row(key: str, vec: np.ndarray) -> TrackletRow:
    return TrackletRow(key=key, start_frame=0, end_frame=1, n_frames=2, embedding=vec)


def test_open_or_rebuild_catches_up_and_drops_deleted(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    vecs = _vectors(8, seed=6)
    a = store.replace_procedure("A", None, "s", "enc-a", [_row(f"a{i}", vecs[i]) for i in range(3)])
    b = store.replace_procedure(
        "B", None, "s", "enc-a", [_row(f"b{i}", vecs[3 + i]) for i in range(2)]
    )
    other = store.replace_procedure("X", None, "s", "enc-b", [_row("x0", vecs[7])])
    index = VectorIndex.open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM, save=True)
    assert sorted(index.ids().tolist()) == sorted(a + b)
    assert VectorIndex.read_infos(tmp_path / "idx") is not None

    # behind the snapshot: a new procedure, a deleted one, and a replaced one
    c = store.replace_procedure("C", None, "s", "enc-a", [_row("c0", vecs[5]), _row("c1", vecs[6])])
    store.delete_procedure("A")
    b2 = store.replace_procedure("B", None, "s", "enc-a", [_row("b0", vecs[3])])
    reopened = VectorIndex.open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    assert sorted(reopened.ids().tolist()) == sorted(c + b2) == store.tracklet_ids("enc-a").tolist()
    assert not set(reopened.ids().tolist()) & set(other)
    (hit,) = reopened.search(vecs[6], 1)
    assert hit[0][0] == c[1]

    # the other encoder version never shares the snapshot: it is rebuilt from its own rows
    index_b = VectorIndex.open_or_rebuild(tmp_path / "idx", store, "enc-b", DIM)
    assert index_b.ids().tolist() == other
    # a corrupt snapshot is rebuilt from the store
    (tmp_path / "idx" / INDEX_FILE).write_bytes(b"garbage")
    rebuilt = VectorIndex.open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    assert sorted(rebuilt.ids().tolist()) == sorted(c + b2)
    store.close()


def test_open_or_rebuild_refuses_store_rows_of_another_dim(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.replace_procedure(
        "A", None, "s", "enc-a", [_row("a0", np.ones(DIM + 2, dtype=np.float32))]
    )
    with pytest.raises(EncoderMismatchError, match="dim"):
        VectorIndex.open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    store.close()
