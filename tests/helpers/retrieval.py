"""The retrieval metric tests' shared pieces: the torchmetrics reference (the test skipped
without it) and the cosine matrices the metrics are computed from."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


def torchmetrics_retrieval() -> tuple[Any, Any]:
    """``torch`` and ``torchmetrics.retrieval``, or the test skipped without them."""
    return pytest.importorskip("torch"), pytest.importorskip("torchmetrics.retrieval")


def cosine_matrix(emb: np.ndarray) -> np.ndarray:
    """The ``(N, N)`` cosine similarities of the rows of ``emb``."""
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return np.asarray(z @ z.T)


def tie_free_cosines(emb: np.ndarray, decimals: int | None = None) -> np.ndarray:
    """:func:`cosine_matrix`, checked to have no two pairs scored alike (to ``decimals``
    when given), so that rankings compared with a reference cannot differ by ties."""
    sim = cosine_matrix(emb)
    pairs = sim[np.triu_indices(len(sim), k=1)]
    rounded = pairs if decimals is None else np.round(pairs, decimals)
    assert np.unique(rounded).size == pairs.size, "test needs tie-free scores"
    return sim
