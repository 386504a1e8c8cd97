"""The one re-identification decision rule (docs/method.md#re-identification-decision):
two tracklets show the same polyp iff ``probability >= threshold``, where, for a model
with a fitted calibration (:mod:`model.scoring.calibration`, stored in its metadata),
``probability`` is the calibrated P(same polyp | cosine) and ``threshold`` the
calibration's; for a model without one, ``probability = sigmoid(cosine)`` (not a
calibrated probability) and ``threshold`` is the model's ``reid_threshold``.

The evaluation (pair scores, the best-F1 threshold), the ``/reid`` endpoint and the
model's threshold all use these functions, so a score means the same everywhere.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polypindex.model.scoring.calibration import Calibration

__all__ = ["ReidDecision", "decide", "reid_score", "same_polyp", "same_polyp_probability"]


def reid_score(cosine: np.ndarray | float) -> np.ndarray:
    """The same-polyp score of a cosine similarity: ``sigmoid(cosine)`` in (0, 1)
    (element-wise on arrays, in their float dtype; a 0-d float64 array for a scalar)."""
    x = np.asarray(cosine)
    return 1.0 / (1.0 + np.exp(-(x if np.issubdtype(x.dtype, np.floating) else x.astype(float))))


def same_polyp_probability(
    cosine: np.ndarray | float, calibration: Calibration | None
) -> np.ndarray:
    """The same-polyp probability of cosine similarities: the calibration's when there
    is one, else :func:`reid_score` (float64)."""
    if calibration is not None:
        return calibration.probability(cosine)
    return np.asarray(reid_score(np.asarray(cosine, dtype=np.float64)))


def same_polyp(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """The decision on a score of :func:`reid_score`: ``score >= threshold``."""
    return np.asarray(score) >= threshold


@dataclass(frozen=True)
class ReidDecision:
    """One pair's re-identification.

    Attributes:
        similarity: the cosine similarity, clipped to [-1, 1].
        probability: the calibrated P(same polyp) when ``calibrated``, else
            :func:`reid_score` of the similarity.
        same_polyp: ``probability >= threshold``.
        threshold: the calibration's threshold when ``calibrated``, else the model's.
        calibrated: whether the model has a fitted calibration.
    """

    similarity: float
    probability: float
    same_polyp: bool
    threshold: float
    calibrated: bool = False


def decide(
    a: np.ndarray, b: np.ndarray, threshold: float, calibration: Calibration | None = None
) -> ReidDecision:
    """Re-identify two L2-normalised embeddings: with the model's ``calibration`` (its
    probability and threshold) when given, else ``sigmoid(cosine) >= threshold``."""
    similarity = float(min(1.0, max(-1.0, float(np.asarray(a) @ np.asarray(b)))))
    probability = float(same_polyp_probability(similarity, calibration))
    threshold = float(threshold if calibration is None else calibration.threshold)
    return ReidDecision(
        similarity,
        probability,
        bool(same_polyp(probability, threshold)),
        threshold,
        calibrated=calibration is not None,
    )
