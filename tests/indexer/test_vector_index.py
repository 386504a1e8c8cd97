"""polypindex.indexer.vectors and .generations: exact search vs numpy, exclusion, save/load, sync."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from polypindex.indexer.generations import (
    check_encoder_has_embeddings,
    generation_dir,
    list_generations,
    open_or_rebuild,
    rebuild_generation,
)
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.indexer.vectors import (
    INDEX_FILE,
    SIDECAR_FILE,
    IndexPolicy,
    VectorIndex,
    gpu_available,
)
from polypindex.model.core.errors import (
    ConfigError,
    EncoderMismatchError,
    IndexNotReadyError,
    InvalidInputError,
)
from polypindex.model.data.config import FragmentConfig, PreprocessConfig

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
    index = open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM, save=True)
    assert sorted(index.ids().tolist()) == sorted(a + b)
    gen_a = generation_dir(tmp_path / "idx", "enc-a")
    assert index.directory == gen_a and VectorIndex.read_infos(gen_a) is not None

    # behind the snapshot: a new procedure, a deleted one, and a replaced one
    c = store.replace_procedure("C", None, "s", "enc-a", [_row("c0", vecs[5]), _row("c1", vecs[6])])
    store.delete_procedure("A")
    b2 = store.replace_procedure("B", None, "s", "enc-a", [_row("b0", vecs[3])])
    reopened = open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    assert sorted(reopened.ids().tolist()) == sorted(c + b2) == store.tracklet_ids("enc-a").tolist()
    assert not set(reopened.ids().tolist()) & set(other)
    (hit,) = reopened.search(vecs[6], 1)
    assert hit[0][0] == c[1]

    # the other encoder version never shares the snapshot: it is rebuilt from its own rows
    index_b = open_or_rebuild(tmp_path / "idx", store, "enc-b", DIM, save=True)
    assert index_b.ids().tolist() == other
    assert index_b.directory == generation_dir(tmp_path / "idx", "enc-b") != gen_a
    assert [g["encoder_version"] for g in list_generations(tmp_path / "idx")] == ["enc-a", "enc-b"]
    # a corrupt snapshot is rebuilt from the store
    (gen_a / INDEX_FILE).write_bytes(b"garbage")
    rebuilt = open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    assert sorted(rebuilt.ids().tolist()) == sorted(c + b2)
    store.close()


def test_open_or_rebuild_refuses_store_rows_of_another_dim(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.replace_procedure(
        "A", None, "s", "enc-a", [_row("a0", np.ones(DIM + 2, dtype=np.float32))]
    )
    with pytest.raises(EncoderMismatchError, match="dim"):
        open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    store.close()


def _recall_at(got: list[list[tuple[int, float]]], want: list[list[tuple[int, float]]]) -> float:
    hits = sum(len({i for i, _ in g} & {i for i, _ in w}) for g, w in zip(got, want, strict=True))
    return hits / sum(len(w) for w in want)


def test_auto_kind_switches_to_hnsw_and_back() -> None:
    policy = IndexPolicy(approximate_threshold=200, hnsw_m=16, hnsw_ef_search=64)
    index = VectorIndex(DIM, "enc-a", kind=None, policy=policy)
    db = _vectors(300, seed=7)
    ids = np.arange(1, 301, dtype=np.int64)
    index.add(ids[:150], db[:150])
    assert index.kind == "flat_ip" and index.auto_kind
    index.add(ids[150:], db[150:])
    assert index.kind == "hnsw_ip" and len(index) == 300 and not index.supports_remove
    queries = _vectors(20, seed=8)
    got = index.search(queries, 10)
    want = _exhaustive(ids, db, queries, 10)
    assert _recall_at(got, want) >= 0.99
    for g, w in zip(got, want, strict=True):  # scores are exact inner products of what is found
        exact = dict(w)
        for i, s in g:
            if i in exact:
                assert s == pytest.approx(exact[i], abs=1e-5)
    # exclusion goes through the id map to HNSW too
    excluded = {i for i, _ in got[0][:5]}
    (row,) = index.search(queries[0], 10, exclude_ids=excluded)
    assert not excluded & {i for i, _ in row} and len(row) == 10
    # removing from HNSW rebuilds the graph; shrinking 10 % below the threshold goes back to exact
    assert index.remove(ids[:50]) == 50
    assert index.kind == "hnsw_ip" and len(index) == 250 and not set(ids[:50]) & set(index.ids())
    assert index.remove(ids[50:110]) == 60  # 190: under the threshold, within its 10 % margin
    assert index.kind == "hnsw_ip" and len(index) == 190
    assert index.remove(ids[110:130]) == 20  # 170: 10 % under it, back to exact
    assert index.kind == "flat_ip" and len(index) == 170
    _assert_same(index.search(queries, 5), _exhaustive(ids[130:], db[130:], queries, 5))


def test_explicit_hnsw_save_load_round_trip(tmp_path: Path) -> None:
    index = VectorIndex(DIM, "enc-a", kind="hnsw_ip", policy=IndexPolicy(hnsw_m=8))
    ids, db = np.arange(5, 105, dtype=np.int64), _vectors(100, seed=9)
    index.add(ids, db)
    index.save(tmp_path / "g")
    loaded = VectorIndex.load(tmp_path / "g", "enc-a")
    assert loaded.kind == "hnsw_ip" and not loaded.auto_kind and loaded.policy.hnsw_m == 8
    queries = _vectors(4, seed=10)
    assert loaded.search(queries, 5) == index.search(queries, 5)
    assert loaded.remove([5, 6, 999]) == 2 and len(loaded) == 98


def test_encoder_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    index = VectorIndex(DIM, "enc-a")
    index.add(np.arange(1, 4, dtype=np.int64), _vectors(3))
    assert index.search(_vectors(1), 2, encoder_version="enc-a")
    with pytest.raises(EncoderMismatchError, match="'enc-a', not 'enc-b'"):
        index.search(_vectors(1), 2, encoder_version="enc-b")
    index.save(generation_dir(tmp_path, "enc-a"))
    with pytest.raises(EncoderMismatchError, match="enc-b"):
        VectorIndex.load(generation_dir(tmp_path, "enc-a"), "enc-b")
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    check_encoder_has_embeddings(store, "enc-b")  # an empty store matches any encoder
    store.replace_procedure("A", None, "s", "enc-a", [_row("a0", _vectors(1)[0])])
    check_encoder_has_embeddings(store, "enc-a")
    with pytest.raises(EncoderMismatchError, match=r"\['enc-a'\] but none of 'enc-b'"):
        check_encoder_has_embeddings(store, "enc-b")
    store.close()


def test_generation_folders_are_safe_and_distinct(tmp_path: Path) -> None:
    assert generation_dir(tmp_path, "enc-a") == tmp_path / "generations" / "enc-a"
    odd = generation_dir(tmp_path, "../x y/z")
    assert odd.parent == tmp_path / "generations" and "/" not in odd.name and ".." not in odd.name
    assert generation_dir(tmp_path, "a b") != generation_dir(tmp_path, "a_b")


def test_rebuild_and_hnsw_sync_with_deletions(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    vecs = _vectors(40, seed=11)
    for p in range(4):
        store.replace_procedure(
            f"P{p}", None, "s", "enc-a", [_row(f"k{i}", vecs[10 * p + i]) for i in range(10)]
        )
    policy = IndexPolicy(approximate_threshold=30, hnsw_m=8)
    rebuilt = rebuild_generation(tmp_path / "idx", store, "enc-a", policy=policy)
    assert (
        rebuilt.kind == "hnsw_ip" and rebuilt.ids().tolist() == store.tracklet_ids("enc-a").tolist()
    )
    assert VectorIndex.read_infos(generation_dir(tmp_path / "idx", "enc-a"))["count"] == 40
    store.delete_procedure("P0")
    store.replace_procedure("P4", None, "s", "enc-a", [_row("k0", vecs[0])])
    index = open_or_rebuild(tmp_path / "idx", store, "enc-a", DIM)
    assert index.kind == "hnsw_ip"
    assert sorted(index.ids().tolist()) == store.tracklet_ids("enc-a").tolist()
    with pytest.raises(IndexNotReadyError, match="no embeddings of encoder 'enc-z'"):
        rebuild_generation(tmp_path / "idx", store, "enc-z")
    store.close()


def test_device_seam_falls_back_to_cpu() -> None:
    assert VectorIndex(DIM, "enc-a", policy=IndexPolicy(device="cpu")).device == "cpu"
    auto = VectorIndex(DIM, "enc-a", policy=IndexPolicy(device="auto"))
    assert auto.device == ("gpu" if gpu_available() else "cpu")
    if not gpu_available():
        with pytest.raises(ConfigError, match="faiss-gpu"):
            VectorIndex(DIM, "enc-a", policy=IndexPolicy(device="gpu"))
    with pytest.raises(ConfigError, match="approximate_threshold"):
        IndexPolicy(approximate_threshold=0)


def test_auto_kind_reaches_ivf_which_searches_removes_and_round_trips(tmp_path: Path) -> None:
    policy = IndexPolicy(approximate_threshold=100, ivf_threshold=400, hnsw_m=8, ivf_nprobe=16)
    assert [policy.kind_for(n) for n in (99, 100, 399, 400)] == [
        "flat_ip",
        "hnsw_ip",
        "hnsw_ip",
        "ivf_ip",
    ]
    # the automatic list count: the power of two nearest to sqrt(N), at least 16, at most N
    assert [policy.nlist_for(n) for n in (10, 500, 10**6)] == [10, 16, 1024]
    index = VectorIndex(DIM, "enc-a", kind=None, policy=policy)
    db = _vectors(500, seed=11)
    ids = np.arange(1, 501, dtype=np.int64)
    index.add(ids[:300], db[:300])
    assert index.kind == "hnsw_ip" and index.nlist() is None
    index.add(ids[300:], db[300:])
    assert index.kind == "ivf_ip" and index.nlist() == 16 and not index.supports_remove
    queries = _vectors(10, seed=12)
    # nprobe = nlist scans every list: the answer is the exhaustive one, exclusion included
    _assert_same(index.search(queries, 7), _exhaustive(ids, db, queries, 7))
    (row,) = index.search(queries[0], 5, exclude_ids=ids[:250].tolist())
    assert [i for i, _ in row] == [
        i for i, _ in _exhaustive(ids[250:], db[250:], queries[:1], 5)[0]
    ]
    # removal re-trains from the kept vectors; the snapshot keeps kind, lists and answers
    assert index.remove(ids[:20]) == 20 and index.kind == "ivf_ip" and len(index) == 480
    index.save(tmp_path / "g")
    loaded = VectorIndex.load(tmp_path / "g", "enc-a")
    assert loaded.kind == "ivf_ip" and loaded.nlist() == 16 and loaded.auto_kind
    assert json.loads((tmp_path / "g" / SIDECAR_FILE).read_text())["nlist"] == 16
    _assert_same(loaded.search(queries, 5), _exhaustive(ids[20:], db[20:], queries, 5))
    # shrinking below the IVF threshold goes back to HNSW
    assert loaded.remove(ids[20:200]) == 180 and loaded.kind == "hnsw_ip"


def test_explicit_ivf_trains_on_its_first_vectors() -> None:
    index = VectorIndex(DIM, "enc-a", kind="ivf_ip", policy=IndexPolicy(ivf_nlist=4, ivf_nprobe=4))
    assert index.search(_vectors(1), 3) == [[]] and index.nlist() is None
    ids, db = np.arange(1, 41, dtype=np.int64), _vectors(40, seed=13)
    index.add(ids[:30], db[:30])
    assert index.nlist() == 4
    index.add(ids[30:], db[30:])  # later vectors go to the trained lists
    assert index.kind == "ivf_ip" and len(index) == 40 and index.nlist() == 4
    queries = _vectors(5, seed=14)
    _assert_same(index.search(queries, 6), _exhaustive(ids, db, queries, 6))
    with pytest.raises(ConfigError, match="ivf_nlist"):
        IndexPolicy(ivf_nlist=-1)


def test_gpu_search_path_gives_the_cpu_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU seam, with FAISS's CPU→GPU copy replaced by a CPU clone (no GPU here)."""
    import faiss

    import polypindex.indexer.vectors.gpu as gpu_placement

    copies: list[object] = []

    def fake_cpu_to_gpu(resources: object, device: int, index: object) -> object:
        copies.append(index)
        return faiss.clone_index(index)

    monkeypatch.setattr(gpu_placement, "gpu_available", lambda: True)
    monkeypatch.setattr(gpu_placement, "_gpu_resources", lambda: object())
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_cpu_to_gpu, raising=False)
    index = VectorIndex(DIM, "enc-a", policy=IndexPolicy(device="auto"))
    assert index.device == "gpu"
    ids, db = np.arange(1, 61, dtype=np.int64), _vectors(60, seed=15)
    index.add(ids[:40], db[:40])
    queries = _vectors(6, seed=16)
    _assert_same(index.search(queries, 5), _exhaustive(ids[:40], db[:40], queries, 5))
    index.add(ids[40:], db[40:])  # a change refreshes the GPU copy
    _assert_same(index.search(queries, 5), _exhaustive(ids, db, queries, 5))
    index.remove(ids[:10])
    _assert_same(index.search(queries, 5), _exhaustive(ids[10:], db[10:], queries, 5))
    assert len(copies) == 3


def test_hnsw_ef_search_follows_the_collection_size_unless_set() -> None:
    auto = IndexPolicy()
    assert [auto.ef_search_for(n) for n in (0, 100_000, 249_999, 250_000, 10**6)] == [
        256,
        256,
        256,
        1024,
        1024,
    ]
    assert IndexPolicy(hnsw_ef_search=64).ef_search_for(10**6) == 64
    assert IndexPolicy.from_dict(auto.to_dict()) == auto
    with pytest.raises(ConfigError, match="hnsw_ef_search"):
        IndexPolicy(hnsw_ef_search=0)
