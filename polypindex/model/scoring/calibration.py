"""Calibrated same-polyp probability of a cosine similarity (docs/grouping.md#calibration).

The uncalibrated re-ID score ``sigmoid(cosine)`` lies in (0.27, 0.73) and is not
a probability. :func:`fit_calibration` fits, on validation pairs (cosine, same
polyp?), two monotone maps and keeps the one with the lower cross-validated log
loss:

- ``platt``: ``p = sigmoid(a · cosine + b)`` (logistic regression on the cosine,
  Newton's method, Platt's smoothed targets);
- ``isotonic``: a non-decreasing step function fitted by pool-adjacent-violators,
  interpolated linearly between the pooled blocks' mean cosines.

The chosen map is refitted on all pairs, and the decision threshold on the
calibrated probability is the best-F1 one on the same pairs. The result is a
plain value stored as JSON in the model's metadata (``polypindex.reid_calibration``)
and read back by :meth:`Calibration.from_json`. numpy only (serving layer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.metrics import expected_calibration_error

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_KEY",
    "METHODS",
    "Calibration",
    "calibration_pairs",
    "fit_calibration",
    "fit_isotonic",
    "fit_platt",
    "log_loss",
]

CALIBRATION_FORMAT = "polypindex-reid-calibration/1"
# the key (after the ``polypindex.`` prefix) of the ONNX metadata and of the checkpoint's extra
CALIBRATION_KEY = "reid_calibration"
METHODS = ("platt", "isotonic")
# Calibrated probabilities are kept inside [EPS, 1 − EPS] (finite log loss).
EPS = 1e-4
CV_FOLDS = 5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of P(positive) (clipped to [EPS, 1 − EPS])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def fit_platt(cosines: np.ndarray, same: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """``(a, b)`` of ``p = sigmoid(a · x + b)`` maximising the likelihood of Platt's
    smoothed targets (``(N₊ + 1) / (N₊ + 2)`` and ``1 / (N₋ + 2)``), by Newton's method
    with a tiny ridge on ``a`` for separable data."""
    x = np.asarray(cosines, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    prior = (n_pos + 1.0) / (x.size + 2.0)
    w = np.array([0.0, math.log(prior / (1.0 - prior))])
    design = np.stack([x, np.ones_like(x)], axis=1)
    ridge = np.diag([1e-6 * x.size, 0.0])
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        grad = design.T @ (p - t) + ridge @ w
        hess = design.T @ (design * (p * (1.0 - p))[:, None]) + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_isotonic(cosines: np.ndarray, same: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators on the pairs sorted by cosine (ties pooled first).

    Returns:
        ``(x, y)``: each pooled block's mean cosine (increasing) and its fraction of
        same-polyp pairs (non-decreasing); :meth:`Calibration.probability`
        interpolates linearly between them and is constant beyond the ends.
    """
    x = np.asarray(cosines, dtype=np.float64)
    y = np.asarray(same, dtype=np.float64)
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    # equal cosines form one block from the start
    uniq, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, xs.size)).astype(np.float64)
    sums_y = np.add.reduceat(ys, start)
    sums_x = uniq * counts
    blocks: list[list[float]] = []  # [sum_y, sum_x, count]
    for sy, sx, n in zip(sums_y, sums_x, counts, strict=True):
        blocks.append([float(sy), float(sx), float(n)])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2]:
            sy2, sx2, n2 = blocks.pop()
            blocks[-1][0] += sy2
            blocks[-1][1] += sx2
            blocks[-1][2] += n2
    return [b[1] / b[2] for b in blocks], [b[0] / b[2] for b in blocks]


@dataclass(frozen=True)
class Calibration:
    """A fitted map from cosine similarity to P(same polyp), with its decision threshold.

    Attributes:
        method: ``"platt"`` or ``"isotonic"``.
        params: ``{"a", "b"}`` (Platt) or ``{"x", "y"}`` knots (isotonic).
        threshold: decision threshold on the calibrated probability (best F1 on the
            fitting pairs): same polyp iff ``probability >= threshold``.
        metrics: what the fit measured on its pairs (``n_pairs``, ``n_positive``,
            ``ece_before``/``ece_after``, ``log_loss_before``/``log_loss_after``,
            the cross-validated log loss of each method ``cv_log_loss``); "before" is
            ``sigmoid(cosine)``.
    """

    method: str
    params: dict[str, Any]
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(
                f"calibration method must be one of {METHODS}, got {self.method!r}"
            )
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise InvalidInputError(
                f"calibration threshold must be in [0, 1], got {self.threshold}"
            )
        if self.method == "platt":
            if not all(math.isfinite(float(self.params.get(k, math.nan))) for k in ("a", "b")):
                raise InvalidInputError(
                    f"platt calibration needs finite a and b, got {self.params}"
                )
        else:
            x, y = self.params.get("x"), self.params.get("y")
            if not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y):
                raise InvalidInputError("isotonic calibration needs equal, non-empty x and y lists")
            xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if not (
                np.all(np.isfinite(xa)) and np.all(np.diff(xa) > 0) and np.all(np.diff(ya) >= 0)
            ):
                raise InvalidInputError("isotonic calibration knots must be finite and increasing")

    def probability(self, cosine: np.ndarray | float) -> np.ndarray:
        """P(same polyp) of cosine similarities (element-wise, float64, in [EPS, 1 − EPS])."""
        x = np.asarray(cosine, dtype=np.float64)
        if self.method == "platt":
            p = _sigmoid(float(self.params["a"]) * x + float(self.params["b"]))
        else:
            p = np.interp(x, self.params["x"], self.params["y"])
        return np.clip(p, EPS, 1.0 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Raises InvalidInputError on anything but a dict written by :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise InvalidInputError(f"not a {CALIBRATION_FORMAT} calibration")
        try:
            return cls(
                method=str(data["method"]),
                params=dict(data["params"]),
                threshold=float(data["threshold"]),
                metrics=dict(data.get("metrics") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed calibration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInputError(f"calibration is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


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
        cal = Calibration(method, _fit(method, x[train], y[train]), 0.5)
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
) -> Calibration:
    """Fit P(same polyp | cosine) on validation pairs.

    Args:
        cosines: (N,) cosine similarities of pairs of tracklets.
        same: (N,) whether each pair shows the same polyp.
        method: ``"platt"``, ``"isotonic"`` or ``None`` (the one with the lower
            :data:`CV_FOLDS`-fold cross-validated log loss; Platt on ties).
        seed: the fold permutation.

    Returns:
        The :class:`Calibration`, refitted on all pairs, with its best-F1 threshold
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
    provisional = Calibration(chosen, _fit(chosen, x, y), 0.5)
    p_after = provisional.probability(x)
    p_before = _sigmoid(x)
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
    return Calibration(chosen, provisional.params, float(min(1.0, threshold)), metrics)
