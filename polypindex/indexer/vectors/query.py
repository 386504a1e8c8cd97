"""Search helpers of :class:`~polypindex.indexer.vectors.index.VectorIndex`: input
checks, the exact search over a small allowed set, and the last guard on scores.

The guard: a returned score is a cosine of unit vectors, so it is finite and in
``[-1, 1]`` up to float32 rounding (:data:`SCORE_EPS`); anything else means the
vectors in memory are not the ones that were indexed, and the index raises
:class:`IndexCorruptError` instead of answering (the service then rebuilds it
from the store).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from polypindex.model.core.errors import IndexNotReadyError, InvalidInputError

SCORE_EPS = 1e-3
SMALL_ALLOWED = 2048
"""Allowed sets up to this size are scored exactly over their own vectors (an HNSW
graph filtered to a tiny subset would miss neighbours)."""


class IndexCorruptError(IndexNotReadyError):
    """The index returned a score that no pair of unit vectors can have."""


def l2_normalize(vectors: np.ndarray, what: str) -> np.ndarray:
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms <= 0):
        bad = np.flatnonzero(norms[:, 0] <= 0)[:5].tolist()
        raise InvalidInputError(f"{what}: zero vector(s) at row(s) {bad} cannot be normalised")
    x /= norms
    return x


def id_array(ids: Collection[int] | np.ndarray | None) -> np.ndarray | None:
    """``ids`` as a sorted unique int64 array (``None`` stays ``None``)."""
    if ids is None:
        return None
    if isinstance(ids, np.ndarray):
        return np.unique(ids.astype(np.int64, copy=False))
    return np.unique(np.fromiter((int(i) for i in ids), np.int64, count=len(ids)))


def check_queries(queries: np.ndarray, dim: int, k: object) -> np.ndarray:
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise InvalidInputError(
            f"queries must have shape (Q, {dim}), got {np.asarray(queries).shape}"
        )
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    return q


def exact_subset(
    queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product over ``vectors`` (``(n, D)``, ids ``ids``), in FAISS's
    shape: ``(scores (Q, k), ids (Q, k))`` with ``-1`` padding."""
    n = len(ids)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    if n == 0:
        return scores, labels
    sims = queries @ vectors.T
    take = min(k, n)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :take]
    scores[:, :take] = np.take_along_axis(sims, order, axis=1)
    labels[:, :take] = ids[order]
    return scores, labels


def checked_hits(
    scores: np.ndarray, labels: np.ndarray, where: str
) -> list[list[tuple[int, float]]]:
    """FAISS output → per query ``(id, score)`` lists, refusing impossible scores."""
    valid = labels >= 0
    got = scores[valid]
    if got.size and (not np.all(np.isfinite(got)) or np.any(np.abs(got) > 1.0 + SCORE_EPS)):
        bad = got[~np.isfinite(got) | (np.abs(got) > 1.0 + SCORE_EPS)][:3].tolist()
        raise IndexCorruptError(
            f"{where}: returned score(s) {bad}, not cosine similarities of unit vectors: "
            f"the index in memory is corrupt; it is rebuilt from the store"
        )
    return [
        [(int(i), float(s)) for i, s, ok in zip(row_ids, row_scores, row_ok, strict=True) if ok]
        for row_ids, row_scores, row_ok in zip(labels, scores, valid, strict=True)
    ]
