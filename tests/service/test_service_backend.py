"""``service.search.search``: a filter (FAISS id selector) still returns k of the allowed ids."""

from __future__ import annotations

import numpy as np
import pytest

from polypindex.indexer.vectors import VectorIndex
from polypindex.service.search import search

DIM = 8
N = 600


@pytest.fixture(scope="module")
def index_and_vectors() -> tuple[VectorIndex, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(DIM, "v1")
    index.add(np.arange(1, N + 1, dtype=np.int64), vectors)
    return index, vectors


def _exhaustive(vectors: np.ndarray, query: np.ndarray, ids: set[int]) -> list[int]:
    scores = vectors @ query
    return [i for i in (np.argsort(-scores, kind="stable") + 1).tolist() if i in ids]


@pytest.mark.parametrize("k", [1, 5, 50])
def test_filter_to_the_worst_ranked_ids_still_returns_k(
    index_and_vectors: tuple[VectorIndex, np.ndarray], k: int
) -> None:
    index, vectors = index_and_vectors
    query = vectors[0]
    ranking = _exhaustive(vectors, query, set(range(1, N + 1)))
    allowed = set(ranking[-40:])  # the ids least like the query: never in a plain top-k
    exclude = {ranking[-1]}
    hits = search(index, query, k, exclude, allowed)
    expected = _exhaustive(vectors, query, allowed - exclude)[:k]
    assert [i for i, _ in hits] == expected
    assert len(hits) == min(k, 39)


def test_no_filter_is_the_plain_top_k(index_and_vectors: tuple[VectorIndex, np.ndarray]) -> None:
    index, vectors = index_and_vectors
    hits = search(index, vectors[5], 10, exclude={6})
    assert [i for i, _ in hits] == _exhaustive(vectors, vectors[5], set(range(1, N + 1)) - {6})[:10]


def test_filter_excluding_everything_is_empty(
    index_and_vectors: tuple[VectorIndex, np.ndarray],
) -> None:
    index, vectors = index_and_vectors
    assert search(index, vectors[0], 5, exclude={1, 2}, allowed={1, 2}) == []
