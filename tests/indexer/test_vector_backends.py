"""polypindex.indexer.vectors backends: every registered one keeps the protocol, and a new
backend is one class plus one registry entry (a numpy one here, used through VectorIndex)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polypindex.indexer.vectors import (
    BACKENDS,
    INDEX_FILE,
    SIDECAR_FILE,
    BackendClass,
    IndexPolicy,
    VectorBackend,
    VectorIndex,
)
from polypindex.indexer.vectors.exact import ExactBackend
from polypindex.indexer.vectors.gpu import GpuSearch
from polypindex.model.core.errors import ConfigError, IndexNotReadyError

DIM = 8
POLICY = IndexPolicy(hnsw_m=8, ivf_nlist=4, ivf_nprobe=4)


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _top(ids: np.ndarray, db: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    order = np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :k]
    return [[int(ids[j]) for j in row] for row in order]


class NumpyBackend:
    """A brute-force inner-product backend on numpy arrays: the whole extension."""

    supports_remove = True
    needs_training = False

    def __init__(self, dim: int, policy: IndexPolicy) -> None:
        self.dim = dim
        self.policy = policy
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)

    @classmethod
    def build(
        cls, dim: int, policy: IndexPolicy, ids: np.ndarray, vectors: np.ndarray
    ) -> NumpyBackend:
        backend = cls(dim, policy)
        backend.add(ids, vectors)
        return backend

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self._ids.copy(), self._vectors.copy()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors]).astype(np.float32)

    def remove(self, ids: np.ndarray) -> int:
        keep = ~np.isin(self._ids, ids)
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        return int((~keep).sum())

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self._vectors.T
        if exclude_ids is not None:
            scores[:, np.isin(self._ids, exclude_ids)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        return top.astype(np.float32), np.where(np.isfinite(top), self._ids[order], -1)

    def serialise(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, ids=self._ids, vectors=self._vectors)
        return buffer.getvalue()

    @classmethod
    def load(cls, data: bytes, policy: IndexPolicy) -> NumpyBackend:
        try:
            with np.load(io.BytesIO(data)) as arrays:
                ids, vectors = arrays["ids"], arrays["vectors"]
        except (OSError, ValueError, KeyError) as exc:
            raise IndexNotReadyError(f"not a numpy index: {exc}") from exc
        return cls.build(int(vectors.shape[1]), policy, ids, vectors)

    def describe(self) -> dict[str, Any]:
        return {"dim": self.dim, "count": len(self), "library": "numpy"}


_STATIC_CHECK: BackendClass = NumpyBackend  # mypy: the class satisfies the protocol


@pytest.fixture
def numpy_kind(monkeypatch: pytest.MonkeyPatch) -> str:
    """The numpy backend registered under its kind name (the one registry line)."""
    monkeypatch.setitem(BACKENDS, "numpy_ip", NumpyBackend)
    return "numpy_ip"


def test_a_registered_toy_backend_serves_the_vector_index(numpy_kind: str, tmp_path: Path) -> None:
    index = VectorIndex(DIM, "enc-a", kind=numpy_kind)
    ids, db = np.arange(10, 50, dtype=np.int64), _unit(40, seed=1)
    index.add(ids, db * 2.0)  # normalised by the index before the backend sees it
    assert index.kind == numpy_kind and len(index) == 40 and index.max_id == 49
    queries = _unit(5, seed=2)
    hits = index.search(queries, 4)
    assert [[i for i, _ in row] for row in hits] == _top(ids, db, queries, 4)
    best_id, best_score = hits[0][0]
    assert best_score == pytest.approx(float(queries[0] @ db[ids == best_id][0]), abs=1e-5)
    # exclusion, and fewer than k left: no -1 padding comes through
    (row,) = index.search(queries[0], 10, exclude_ids=set(range(10, 45)))
    assert {i for i, _ in row} == set(range(45, 50))
    assert index.remove([10, 11, 999]) == 2 and 10 not in index and len(index) == 38
    index.save(tmp_path / "g")
    infos = json.loads((tmp_path / "g" / SIDECAR_FILE).read_text())
    assert infos["kind"] == numpy_kind and infos["library"] == "numpy" and infos["count"] == 38
    assert infos["nlist"] is None and infos["encoder_version"] == "enc-a"
    loaded = VectorIndex.load(tmp_path / "g", "enc-a")
    assert loaded.kind == numpy_kind and sorted(loaded.ids().tolist()) == list(range(12, 50))
    assert loaded.search(queries, 4) == index.search(queries, 4)
    assert loaded.nlist() is None and loaded.supports_remove


def test_an_unregistered_kind_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown index kind 'numpy_ip'"):
        VectorIndex(DIM, "enc-a", kind="numpy_ip")
    monkeypatch.setitem(BACKENDS, "numpy_ip", NumpyBackend)
    index = VectorIndex(DIM, "enc-a", kind="numpy_ip")
    index.add(np.arange(1, 4, dtype=np.int64), _unit(3, seed=3))
    index.save(tmp_path / "g")
    monkeypatch.delitem(BACKENDS, "numpy_ip")
    with pytest.raises(IndexNotReadyError, match="unknown index kind"):
        VectorIndex.load(tmp_path / "g")
    (tmp_path / "g" / INDEX_FILE).write_bytes(b"garbage")  # its checksum no longer matches
    with pytest.raises(IndexNotReadyError, match="corrupt or torn"):
        VectorIndex.load(tmp_path / "g")


def test_the_policy_picks_only_registered_kinds() -> None:
    policy = IndexPolicy(approximate_threshold=10, ivf_threshold=100)
    assert {policy.kind_for(n) for n in (0, 10, 100)} == set(BACKENDS)


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_registered_backend_keeps_the_protocol(kind: str) -> None:
    cls = BACKENDS[kind]
    empty = cls(DIM, POLICY)
    assert isinstance(empty, VectorBackend) and len(empty) == 0 and empty.dim == DIM
    assert isinstance(empty.supports_remove, bool) and isinstance(empty.needs_training, bool)
    ids, db = np.arange(100, 164, dtype=np.int64), _unit(64, seed=4)
    backend = cls.build(DIM, POLICY, ids, db)
    assert backend.ids().tolist() == ids.tolist()
    held_ids, held = backend.vectors()
    assert held_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(held, db, atol=1e-6)
    queries = _unit(3, seed=5)
    scores, labels = backend.search(queries, 5)
    assert scores.shape == labels.shape == (3, 5)
    assert labels.tolist() == _top(ids, db, queries, 5)  # exact at this size and these settings
    _, kept = backend.search(queries, 5, np.arange(100, 160, dtype=np.int64))
    assert set(kept.ravel().tolist()) <= set(range(160, 164)) | {-1}
    assert backend.remove(np.array([100, 101, 7], dtype=np.int64)) == 2 and len(backend) == 62
    again = cls.load(bytes(backend.serialise()), POLICY)
    assert again.ids().tolist() == backend.ids().tolist()
    assert again.search(queries, 5)[1].tolist() == backend.search(queries, 5)[1].tolist()
    description = backend.describe()
    assert description["dim"] == DIM and description["count"] == 62
    with pytest.raises(IndexNotReadyError):
        cls.load(b"not an index", POLICY)


def test_the_gpu_placement_keeps_the_protocol() -> None:
    placed = GpuSearch(ExactBackend(DIM, POLICY))
    assert isinstance(placed, VectorBackend) and placed.supports_remove
    placed.policy = IndexPolicy(ivf_nprobe=2)
    assert placed.inner.policy.ivf_nprobe == 2
