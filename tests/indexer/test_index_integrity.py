"""An index that cannot lie: the snapshot's checksum, the rebuild and write-back of a
missing or broken file, ``index generations`` verifying the file, the score guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from polypindex.cli import app
from polypindex.indexer.generations import describe_generations, generation_dir, open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.indexer.vectors import (
    INDEX_FILE,
    SIDECAR_FILE,
    IndexCorruptError,
    IndexPolicy,
    SnapshotError,
    VectorIndex,
    faiss_base,
    verify_snapshot,
)

DIM = 16
VERSION = "enc-a"
FLIPS = 200


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _store(tmp_path: Path, n: int = 40) -> tuple[Store, np.ndarray]:
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    vectors = _unit(n, seed=1)
    rows = [
        TrackletRow(key=f"t{i}", start_frame=i, end_frame=i + 1, n_frames=2, embedding=vectors[i])
        for i in range(n)
    ]
    store.replace_procedure("P", None, "synthetic", VERSION, rows)
    return store, vectors


@pytest.mark.parametrize("kind", ["flat_ip", "hnsw_ip"])
def test_any_flipped_byte_is_detected(tmp_path: Path, kind: str) -> None:
    index = VectorIndex(DIM, VERSION, kind=kind, policy=IndexPolicy(hnsw_m=8))
    index.add(np.arange(1, 301, dtype=np.int64), _unit(300, seed=2))
    index.save(tmp_path / "g")
    path = tmp_path / "g" / INDEX_FILE
    clean = path.read_bytes()
    assert verify_snapshot(tmp_path / "g") is None
    rng = np.random.default_rng(7)
    payload_start = len(clean) // 10  # most flips land in the float payload, some in headers
    for trial in range(FLIPS):
        data = bytearray(clean)
        where = int(rng.integers(0 if trial % 10 == 0 else payload_start, len(data)))
        data[where] ^= 1 << int(rng.integers(0, 8))  # one flipped bit, anywhere
        path.write_bytes(bytes(data))
        with pytest.raises(SnapshotError, match="corrupt or torn"):
            VectorIndex.load(tmp_path / "g")
        assert verify_snapshot(tmp_path / "g") is not None
    path.write_bytes(clean[:-5])  # a torn file
    with pytest.raises(SnapshotError, match="bytes"):
        VectorIndex.load(tmp_path / "g")
    path.write_bytes(clean)
    assert len(VectorIndex.load(tmp_path / "g")) == 300


def test_a_sidecar_without_checksum_is_not_trusted(tmp_path: Path) -> None:
    index = VectorIndex(DIM, VERSION)
    index.add(np.arange(1, 5, dtype=np.int64), _unit(4, seed=3))
    index.save(tmp_path / "g")
    infos = json.loads((tmp_path / "g" / SIDECAR_FILE).read_text())
    assert infos["checksum"].startswith("sha256:") and infos["index_bytes"] > 0
    del infos["checksum"]
    (tmp_path / "g" / SIDECAR_FILE).write_text(json.dumps(infos))
    with pytest.raises(SnapshotError, match="no checksum"):
        VectorIndex.load(tmp_path / "g")


@pytest.mark.parametrize("damage", ["missing", "flipped", "sidecar_missing"])
def test_a_broken_snapshot_is_rebuilt_from_the_store_and_written_back(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = _store(tmp_path)
    root = tmp_path / "idx"
    open_or_rebuild(root, store, VERSION, DIM, save=True)
    folder = generation_dir(root, VERSION)
    if damage == "missing":
        (folder / INDEX_FILE).unlink()
    elif damage == "sidecar_missing":
        (folder / SIDECAR_FILE).unlink()
    else:
        data = bytearray((folder / INDEX_FILE).read_bytes())
        data[-100] ^= 0x40
        (folder / INDEX_FILE).write_bytes(bytes(data))
    assert verify_snapshot(folder) is not None or damage == "sidecar_missing"
    index = open_or_rebuild(root, store, VERSION, DIM)  # save=False: written back anyway
    assert index.rebuilt_reason is not None and "rebuilt" in caplog.text
    assert sorted(index.ids().tolist()) == store.tracklet_ids(VERSION).tolist()
    assert verify_snapshot(folder) is None  # the rebuilt index was written back
    assert sorted(VectorIndex.load(folder).ids().tolist()) == store.tracklet_ids(VERSION).tolist()
    store.close()


def test_generations_verifies_the_file_not_only_the_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = _store(tmp_path)
    root = tmp_path / "idx"
    open_or_rebuild(root, store, VERSION, DIM, save=True)
    (entry,) = describe_generations(root, store)
    assert entry["in_sync"] and entry["file_problem"] is None
    (generation_dir(root, VERSION) / INDEX_FILE).unlink()
    (entry,) = describe_generations(root, store)
    assert not entry["in_sync"] and "missing" in entry["file_problem"]
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    result = CliRunner().invoke(
        app, ["index", "generations", "--database-url", url, "--index-dir", str(root)]
    )
    assert result.exit_code == 0, result.output
    (shown,) = json.loads(result.stdout)
    assert shown["in_sync"] is False and "missing" in shown["file_problem"]
    store.close()


def test_an_impossible_score_marks_the_index_corrupt(tmp_path: Path) -> None:
    index = VectorIndex(DIM, VERSION)
    index.add(np.arange(1, 11, dtype=np.int64), _unit(10, seed=4))
    assert index.search(_unit(1, seed=5), 3)[0][0][1] <= 1.0 + 1e-3
    faiss = faiss_base.faiss
    flat = faiss.downcast_index(index._backend.faiss_index.index)  # type: ignore[attr-defined]
    codes = faiss.vector_to_array(flat.codes).view(np.float32).copy()
    codes[:DIM] = 3.26e38  # what flipped exponent bits in memory do
    flat.codes.clear()
    faiss.copy_array_to_vector(codes.view(np.uint8), flat.codes)
    with pytest.raises(IndexCorruptError, match="not cosine"):
        index.search(np.ones(DIM, dtype=np.float32), 10)
    assert index.corrupt is not None
