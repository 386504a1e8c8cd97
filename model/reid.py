"""The one re-identification decision rule (docs/method.md#re-identification-decision):
two tracklets show the same polyp iff ``sigmoid(cosine) >= reid_threshold``, the
threshold stored with the model.

The evaluation (pair scores, the best-F1 threshold), the ``/reid`` endpoint and the
model's threshold all use these functions, so a score means the same everywhere.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReidDecision", "decide", "reid_score", "same_polyp"]


def reid_score(cosine: np.ndarray | float) -> np.ndarray:
    """The same-polyp score of a cosine similarity: ``sigmoid(cosine)`` in (0, 1)
    (element-wise on arrays, in their float dtype; a 0-d float64 array for a scalar)."""
    x = np.asarray(cosine)
    return 1.0 / (1.0 + np.exp(-(x if np.issubdtype(x.dtype, np.floating) else x.astype(float))))


def same_polyp(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """The decision on a score of :func:`reid_score`: ``score >= threshold``."""
    return np.asarray(score) >= threshold


@dataclass(frozen=True)
class ReidDecision:
    """One pair's re-identification.

    Attributes:
        similarity: the cosine similarity, clipped to [-1, 1].
        probability: :func:`reid_score` of it.
        same_polyp: ``probability >= threshold``.
        threshold: the model's threshold.
    """

    similarity: float
    probability: float
    same_polyp: bool
    threshold: float


def decide(a: np.ndarray, b: np.ndarray, threshold: float) -> ReidDecision:
    """Re-identify two L2-normalised embeddings with the model's ``threshold``."""
    similarity = float(min(1.0, max(-1.0, float(np.asarray(a) @ np.asarray(b)))))
    probability = float(reid_score(similarity))
    threshold = float(threshold)
    return ReidDecision(
        similarity, probability, bool(same_polyp(probability, threshold)), threshold
    )
