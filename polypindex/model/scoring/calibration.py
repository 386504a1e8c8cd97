"""Calibrated same-polyp probability by context, with abstention (docs/grouping.md#calibration).

A pair of tracklets within one procedure and a pair across two procedures are
different questions: on the demo data no polyp spans two procedures, so a single
curve over all validation pairs learns "same procedure?" rather than "same polyp?".
:func:`fit_reid_calibration` therefore fits one :class:`~model.scoring.contexts.ContextFit`
per context on a :class:`~model.scoring.pairs.PairSet` of validation pairs, the
validation procedures split into a fitting half (the curves) and an operating-point
half (the thresholds of ``same`` and ``different`` and the held-out metrics):

- ``within``: pairs within one procedure, on the cosine, the time gap, the frame
  overlap and the box size ratio (:data:`~model.scoring.pairs.FEATURES`);
- ``within_cosine``: the same pairs on the cosine alone, for a pair whose time or
  boxes are not known;
- ``cross``: pairs across procedures, on the cosine; not estimable (the prior, every
  answer uncertain) when the fitting pairs hold no same-polyp pair across procedures.

The result, a :class:`Calibration`, is JSON in the checkpoint's ``extra`` and the
ONNX metadata under :data:`CALIBRATION_KEY`. A calibration written before contexts
existed (format ``/1``, one cosine curve) still reads, as the ``within`` context with
``legacy: true`` and no operating point (every answer uncertain). numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.tracklets import Tracklet
from polypindex.model.scoring.contexts import (
    DEFAULT_MIN_SUPPORT,
    DEFAULT_TARGET,
    ContextFit,
    Rule,
    fit_context,
)
from polypindex.model.scoring.cosine_curve import (
    COSINE_FORMAT,
    EPS,
    METHODS,
    CosineCalibration,
    fit_isotonic,
    fit_platt,
)
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.pairs import CROSS, FEATURES, WITHIN, PairSet, TrackletFacts, pair_set

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_KEY",
    "CONTEXT_FEATURES",
    "WITHIN_COSINE",
    "Calibration",
    "calibration_pairs",
    "fit_calibration",
    "fit_reid_calibration",
    "fit_tracklet_calibration",
    "log_loss",
]

CALIBRATION_FORMAT = "polypindex-reid-calibration/2"
# the key (after the ``polypindex.`` prefix) of the ONNX metadata and of the checkpoint's extra
CALIBRATION_KEY = "reid_calibration"
WITHIN_COSINE = "within_cosine"
# the features each context's curve reads
CONTEXT_FEATURES: dict[str, tuple[str, ...]] = {
    WITHIN: FEATURES,
    WITHIN_COSINE: ("cosine",),
    CROSS: ("cosine",),
}
CV_FOLDS = 5
LEGACY_WARNING = (
    "legacy calibration (one cosine curve fitted on all validation pairs, within and "
    "across procedures, an older release): read as the within-procedure context without "
    "held-out operating points, so every answer is uncertain; retrain the model to "
    "calibrate by context"
)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of P(positive) (clipped to [EPS, 1 − EPS])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def _best_f1(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 of ``score >= threshold`` (candidates: the distinct
    scores; the highest among equal F1), and that F1."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    f1 = 2.0 * tps / (2.0 * tps + fps + (tps[-1] - tps))
    best = int(np.argmax(f1))
    return float(s[last[best]]), float(f1[best])


def _fit(method: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "platt":
        a, b = fit_platt(x, y)
        return {"a": a, "b": b}
    xs, ys = fit_isotonic(x, y)
    return {"x": xs, "y": ys}


def _cv_log_loss(method: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """Mean held-out log loss over ``folds`` stratified folds (a fixed permutation)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(x.size, dtype=np.int64)
    for cls_mask in (y, ~y):
        idx = np.flatnonzero(cls_mask)
        fold[idx[rng.permutation(idx.size)]] = np.arange(idx.size) % folds
    losses = []
    for k in range(folds):
        test = fold == k
        train = ~test
        if not test.any() or y[train].all() or not y[train].any():
            continue
        cal = CosineCalibration(method, _fit(method, x[train], y[train]), 0.5)
        losses.append(log_loss(cal.probability(x[test]), y[test]) * test.sum())
    return float(np.sum(losses) / x.size) if losses else math.inf


def calibration_pairs(
    embeddings: np.ndarray, identities: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    """``(cosines, same)`` of every unordered pair ``i < j`` of tracklet embeddings
    (rows L2-normalised here), the input of :func:`fit_calibration`."""
    e = np.asarray(embeddings, dtype=np.float64)
    ids = list(identities)
    if e.ndim != 2 or e.shape[0] != len(ids):
        raise InvalidInputError(
            f"need (N, D) embeddings and N identities, got {e.shape}, {len(ids)}"
        )
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    codes = np.unique(np.asarray([str(i) for i in ids]), return_inverse=True)[1]
    iu, ju = np.triu_indices(e.shape[0], k=1)
    cos = np.clip(np.einsum("ij,ij->i", e[iu], e[ju]), -1.0, 1.0)
    return cos, codes[iu] == codes[ju]


def fit_calibration(
    cosines: np.ndarray, same: np.ndarray, method: str | None = None, seed: int = 0
) -> CosineCalibration:
    """Fit one P(same polyp | cosine) curve on pairs, whatever their context (the
    calibration of models of older releases, kept for ``bench counting``; models now
    carry :func:`fit_reid_calibration`'s).

    Args:
        cosines: (N,) cosine similarities of pairs of tracklets.
        same: (N,) whether each pair shows the same polyp.
        method: ``"platt"``, ``"isotonic"`` or ``None`` (the one with the lower
            :data:`CV_FOLDS`-fold cross-validated log loss; Platt on ties).
        seed: the fold permutation.

    Returns:
        The :class:`~model.scoring.cosine_curve.CosineCalibration`, refitted on all pairs, with its best-F1 threshold
        and its before/after ECE and log loss on these pairs.

    Raises:
        InvalidInputError: malformed input, or no positive or no negative pair.
    """
    x = np.asarray(cosines, dtype=np.float64).reshape(-1)
    y = np.asarray(same).reshape(-1).astype(bool)
    if x.size != y.size or x.size == 0:
        raise InvalidInputError(
            f"cosines and same must have equal, non-zero length, got {x.size}, {y.size}"
        )
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("cosines must be finite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InvalidInputError(
            f"calibration needs same-polyp and different-polyp pairs, got {n_pos} of {y.size} same"
        )
    if method is not None and method not in METHODS:
        raise InvalidInputError(f"calibration method must be one of {METHODS}, got {method!r}")
    cv = {m: _cv_log_loss(m, x, y, CV_FOLDS, seed) for m in METHODS}
    chosen = method or min(METHODS, key=lambda m: (cv[m], METHODS.index(m)))
    provisional = CosineCalibration(chosen, _fit(chosen, x, y), 0.5)
    p_after = provisional.probability(x)
    p_before = 1.0 / (1.0 + np.exp(-x))  # sigmoid(cosine), the uncalibrated score
    threshold, f1 = _best_f1(p_after, y)
    metrics = {
        "n_pairs": int(x.size),
        "n_positive": n_pos,
        "ece_before": expected_calibration_error(p_before, y.astype(np.int64)),
        "ece_after": expected_calibration_error(p_after, y.astype(np.int64)),
        "log_loss_before": log_loss(p_before, y),
        "log_loss_after": log_loss(p_after, y),
        "cv_log_loss": {m: (None if not math.isfinite(v) else v) for m, v in cv.items()},
        "f1": float(f1),
    }
    return CosineCalibration(chosen, provisional.params, float(min(1.0, threshold)), metrics)


@dataclass(frozen=True)
class Calibration:
    """A model's same-polyp calibration: one :class:`~model.scoring.contexts.ContextFit`
    per context, and the settings it was fitted with.

    Attributes:
        contexts: ``{"within", "within_cosine", "cross"}`` → its fit (a legacy
            calibration has ``within`` only).
        target: the precision / NPV the operating points had to reach.
        min_support: held-out answers an operating point needed.
        procedures: the validation procedures of each half, ``{"fit", "operating"}``.
        legacy: read from a format ``/1`` calibration (see :data:`LEGACY_WARNING`).
        warnings: what a reader should know (the legacy warning).
        source: the format ``/1`` curve a legacy calibration was read from (written
            back as it was, so that exporting an older checkpoint keeps it).
    """

    contexts: dict[str, ContextFit]
    target: float = DEFAULT_TARGET
    min_support: int = DEFAULT_MIN_SUPPORT
    procedures: dict[str, list[str]] = field(default_factory=dict)
    legacy: bool = False
    warnings: tuple[str, ...] = ()
    source: CosineCalibration | None = None

    def context(self, name: str) -> ContextFit | None:
        return self.contexts.get(name)

    @property
    def metrics(self) -> dict[str, Any]:
        """Pairs and same-polyp pairs each context was fitted on (``n_pairs``,
        ``n_positive``: totals over the contexts' fitting halves; per context)."""
        fits = [c for n, c in self.contexts.items() if n != WITHIN_COSINE]
        return {
            "n_pairs": sum(c.n_pairs.get("fit", 0) for c in fits),
            "n_positive": sum(c.n_positive.get("fit", 0) for c in fits),
            "contexts": {
                n: {"n_pairs": c.n_pairs, "n_positive": c.n_positive, "estimable": c.estimable}
                for n, c in self.contexts.items()
            },
        }

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` shows: per context whether it is estimable, which answers
        it can give (with their held-out precision / NPV and interval) and why not."""
        out: dict[str, Any] = {
            "legacy": self.legacy,
            "target": self.target,
            "warnings": list(self.warnings),
            "contexts": {},
        }
        for name, c in self.contexts.items():
            out["contexts"][name] = {
                "estimable": c.estimable,
                "answers": [r.answer for r in (c.same, c.different) if r.threshold is not None],
                "same": c.same.to_dict(),
                "different": c.different.to_dict(),
                "n_pairs": c.n_pairs,
                "n_positive": c.n_positive,
                "reasons": c.reasons,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.source is not None:
            return self.source.to_dict()
        return {
            "format": CALIBRATION_FORMAT,
            "target": self.target,
            "min_support": self.min_support,
            "procedures": self.procedures,
            "contexts": {n: c.to_dict() for n, c in self.contexts.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_cosine(cls, cosine: CosineCalibration) -> Calibration:
        """A format ``/1`` curve read as the within-procedure context (legacy)."""
        n = int(cosine.metrics.get("n_pairs", 0))
        pos = int(cosine.metrics.get("n_positive", 0))
        none = "a legacy calibration has no held-out operating point"
        try:
            curve = cosine.curve()
        except InvalidInputError:  # a falling curve: nothing monotone to keep
            curve = None
        within = ContextFit(
            WITHIN,
            curve is not None,
            pos / n if n else 0.0,
            curve,
            Rule("same", reason=none),
            Rule("different", reason=none),
            n_pairs={"fit": n},
            n_positive={"fit": pos},
            metrics={"legacy": cosine.metrics, "legacy_threshold": cosine.threshold},
            reason=LEGACY_WARNING,
            legacy=True,
        )
        return cls({WITHIN: within}, legacy=True, warnings=(LEGACY_WARNING,), source=cosine)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Read a calibration of format ``/2``, or ``/1`` as :meth:`from_cosine`.

        Raises:
            InvalidInputError: anything else, or a malformed one.
        """
        if isinstance(data, dict) and data.get("format") == COSINE_FORMAT:
            return cls.from_cosine(CosineCalibration.from_dict(data))
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise InvalidInputError(f"not a {CALIBRATION_FORMAT} (or {COSINE_FORMAT}) calibration")
        try:
            contexts = {str(n): ContextFit.from_dict(c) for n, c in dict(data["contexts"]).items()}
            return cls(
                contexts,
                target=float(data["target"]),
                min_support=int(data["min_support"]),
                procedures={k: list(v) for k, v in dict(data.get("procedures") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidInputError(f"malformed calibration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInputError(f"calibration is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def fit_reid_calibration(
    pairs: PairSet, target: float = DEFAULT_TARGET, min_support: int = DEFAULT_MIN_SUPPORT
) -> Calibration:
    """Fit every context on the fitting half of ``pairs`` and choose its operating
    points on the other half (module docstring).

    Args:
        pairs: the validation pairs (:func:`~model.scoring.pairs.pair_set`).
        target: the precision of ``same`` and the NPV of ``different`` to reach (0.5, 1).
        min_support: held-out answers behind an operating point.
    """
    contexts: dict[str, ContextFit] = {}
    for name, features in CONTEXT_FEATURES.items():
        columns = [FEATURES.index(f) for f in features]
        within = name != CROSS
        halves = []
        for half in (0, 1):
            x, y = pairs.select(within, half)
            known = np.all(np.isfinite(x[:, columns]), axis=1)  # e.g. a tracklet without boxes
            halves.append((x[known][:, columns], y[known]))
        contexts[name] = fit_context(name, features, halves[0], halves[1], target, min_support)
    fit, operating = pairs.procedures
    return Calibration(
        contexts, target, min_support, {"fit": list(fit), "operating": list(operating)}
    )


def fit_tracklet_calibration(
    embeddings: np.ndarray,
    tracklets: Sequence[Tracklet],
    target: float = DEFAULT_TARGET,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Calibration:
    """:func:`fit_reid_calibration` on every pair of a split's tracklets (their videos
    are their procedures, their identities the truth): what training calls on the
    validation tracklets."""
    facts = [TrackletFacts.of_tracklet(t, i) for i, t in enumerate(tracklets)]
    identities = [str(t.identity_id) for t in tracklets]
    return fit_reid_calibration(pair_set(embeddings, identities, facts), target, min_support)
