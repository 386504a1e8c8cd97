"""The one re-identification decision (docs/method.md#re-identification-decision): every
caller — ``/reid``, ``/search`` hits, grouping into polyps, the viewer's labels — asks
:func:`decide` and gets a three-way :class:`Decision`:

- ``same`` — the same tracklet, identical embeddings (probability 1), or a calibrated
  probability at or above its context's ``same`` operating point (held-out precision
  ≥ the target, model.scoring.contexts);
- ``different`` — at or below the context's ``different`` operating point (held-out
  negative predictive value ≥ the target);
- ``uncertain`` — anything else: between the two, a context without an operating
  point or not estimable (the reason says which), a pair whose context is not known,
  or a model without a calibration.

Probabilities are printed by :func:`format_pair`, which never shows "0.13 < 0.13".
:func:`reid_score` (``sigmoid(cosine)``) stays the ranking score of the evaluation and
the score of models without a calibration. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.calibration import WITHIN_COSINE, Calibration
from polypindex.model.scoring.contexts import ContextFit
from polypindex.model.scoring.pairs import (
    CROSS,
    UNKNOWN,
    WITHIN,
    PairEvidence,
    TrackletFacts,
    pair_evidence,
)

__all__ = [
    "Decision",
    "decide",
    "format_pair",
    "format_probability",
    "probability_matrix",
    "reid_score",
    "same_polyp",
]

MAX_DIGITS = 12


def reid_score(cosine: np.ndarray | float) -> np.ndarray:
    """The same-polyp score of a cosine similarity: ``sigmoid(cosine)`` in (0, 1)
    (element-wise on arrays, in their float dtype; a 0-d float64 array for a scalar)."""
    x = np.asarray(cosine)
    return 1.0 / (1.0 + np.exp(-(x if np.issubdtype(x.dtype, np.floating) else x.astype(float))))


def same_polyp(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """The uncalibrated rule on a score of :func:`reid_score`: ``score >= threshold``."""
    return np.asarray(score) >= threshold


def format_probability(p: float | None, digits: int = 2) -> str:
    """A probability with ``digits`` decimals (``"n/a"`` for ``None``)."""
    return "n/a" if p is None else f"{float(p):.{digits}f}"


def format_pair(p: float, threshold: float, digits: int = 2) -> tuple[str, str]:
    """A probability and a threshold printed so that the printed numbers compare as the
    numbers do: with ``digits`` decimals, more when they differ but would print alike
    (``0.1299`` against ``0.13`` prints ``0.1299`` and ``0.1300``, never ``0.13 < 0.13``).
    Rounding is monotone, so the printed order never contradicts the true one."""
    d = digits
    while d < MAX_DIGITS and p != threshold:
        a, b = format_probability(p, d), format_probability(threshold, d)
        if a != b:
            return a, b
        d += 1
    if p < threshold:  # closer than MAX_DIGITS decimals: round apart, still in order
        scale = 10.0**d
        below, above = math.floor(p * scale) / scale, math.ceil(threshold * scale) / scale
        if below == above:  # threshold exactly on the grid: p lies in the cell below it
            below -= 1.0 / scale
        return format_probability(max(below, 0.0), d), format_probability(above, d)
    return format_probability(p, d), format_probability(threshold, d)


@dataclass(frozen=True)
class Decision:
    """One pair's re-identification.

    Attributes:
        answer: ``same``, ``different`` or ``uncertain``.
        probability: the calibrated P(same polyp) (1 for the same tracklet or
            identical embeddings), or ``None`` when there is none (no calibration,
            or a pair whose context is not known).
        similarity: the cosine similarity, clipped to [-1, 1].
        context: the pair's context as decided: ``within``, ``within_cosine`` (within
            one procedure, time or boxes not known), ``cross`` or ``unknown``.
        reason: why the answer is what it is (always set for ``uncertain``).
        same_threshold / different_threshold: the context's operating points
            (``None`` where it has none).
        estimable: whether the context's probability is an estimate (not the prior).
        calibrated: whether the model has a calibration.
    """

    answer: str
    probability: float | None
    similarity: float
    context: str
    reason: str | None = None
    same_threshold: float | None = None
    different_threshold: float | None = None
    estimable: bool = False
    calibrated: bool = False

    @property
    def same_polyp(self) -> bool:
        return self.answer == "same"

    @property
    def label(self) -> str:
        """The answer in words with its probability, e.g. ``same polyp · p=0.97 ≥ 0.91``
        (numbers by :func:`format_pair`)."""
        p = self.probability
        if p is None:
            return f"{self.answer} · no calibrated probability"
        if self.answer == "same" and self.same_threshold is not None and p < 1.0:
            a, b = format_pair(p, self.same_threshold)
            return f"same polyp · p={a} ≥ {b}"
        if self.answer == "same":
            return f"same polyp · p={format_probability(p)}"
        if self.answer == "different" and self.different_threshold is not None:
            a, b = format_pair(p, self.different_threshold)
            return f"different polyp · p={a} ≤ {b}"
        if self.same_threshold is not None:
            a, b = format_pair(p, self.same_threshold)
            return f"uncertain · p={a} (same needs ≥ {b})"
        return f"uncertain · p={format_probability(p)}"

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``same_polyp`` and ``label`` (JSON-ready)."""
        return {**asdict(self), "same_polyp": self.same_polyp, "label": self.label}


def _pick(evidence: PairEvidence, calibration: Calibration) -> tuple[ContextFit | None, str]:
    """The context fit that answers ``evidence`` (``None``: none applies) and its name."""
    if evidence.context == CROSS:
        return calibration.context(CROSS), CROSS
    for name in (WITHIN, WITHIN_COSINE):
        fit = calibration.context(name)
        if fit is not None and evidence.features(fit.features) is not None:
            return fit, name
    return None, WITHIN


def _uncertain_reason(p: float, fit: ContextFit) -> str:
    parts = []
    if fit.estimable and fit.same.threshold is not None and p < fit.same.threshold:
        a, b = format_pair(p, fit.same.threshold)
        parts.append(f"p={a} is below the same-polyp point {b}")
    if fit.estimable and fit.different.threshold is not None and p > fit.different.threshold:
        a, b = format_pair(p, fit.different.threshold)
        parts.append(f"p={a} is above the different-polyp point {b}")
    return "; ".join([*parts, *fit.reasons]) or "the operating points disagree"


def decide(evidence: PairEvidence, calibration: Calibration | None) -> Decision:
    """The decision on one pair (module docstring).

    Args:
        evidence: the pair (:func:`model.scoring.pairs.pair_evidence`).
        calibration: the model's (``OnnxEncoder.reid_calibration``), or ``None``.
    """
    sim = evidence.similarity
    calibrated = calibration is not None
    if evidence.identical:
        why = "the same tracklet" if evidence.same_tracklet else "identical embeddings"
        return Decision("same", 1.0, sim, evidence.context, why, None, None, True, calibrated)
    if calibration is None:
        return Decision(
            "uncertain",
            None,
            sim,
            evidence.context,
            "the model has no calibration (exported before calibration existed): "
            "its similarity is not a probability",
        )
    if evidence.context == UNKNOWN:
        return Decision(
            "uncertain",
            None,
            sim,
            UNKNOWN,
            "the procedures of the pair are not known, and the same-polyp probability "
            "depends on whether both come from one procedure",
            calibrated=True,
        )
    fit, name = _pick(evidence, calibration)
    if fit is None:
        return Decision(
            "uncertain",
            None,
            sim,
            name,
            f"the model's calibration has no {name} context",
            calibrated=True,
        )
    x = evidence.features(fit.features)
    assert x is not None  # _pick checked it
    p = float(fit.probability(x)[0])
    answer = fit.answer(p)
    same_t, diff_t = fit.same.threshold, fit.different.threshold
    reason = _uncertain_reason(p, fit) if answer == "uncertain" else None
    return Decision(answer, p, sim, name, reason, same_t, diff_t, fit.estimable, True)


def probability_matrix(
    embeddings: np.ndarray, facts: Sequence[TrackletFacts], calibration: Calibration
) -> tuple[np.ndarray, np.ndarray]:
    """The decisions of every pair of one procedure's tracklets, as matrices.

    Args:
        embeddings: (N, D) L2-normalised embeddings.
        facts: their N facts (one procedure).
        calibration: the model's.

    Returns:
        ``(probabilities, same)``: (N, N) float64 P(same polyp) (1 on the diagonal; 0
        where :func:`decide` gives none) and (N, N) bool ``answer == "same"``.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(facts)
    if e.ndim != 2 or e.shape[0] != n:
        raise InvalidInputError(f"need (N, D) embeddings for N={n} tracklets, got {e.shape}")
    cos = np.clip(e @ e.T, -1.0, 1.0)
    probs = np.eye(n)
    same = np.eye(n, dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            d = decide(pair_evidence(float(cos[i, j]), facts[i], facts[j]), calibration)
            probs[i, j] = probs[j, i] = 0.0 if d.probability is None else d.probability
            same[i, j] = same[j, i] = d.answer == "same"
    return probs, same
