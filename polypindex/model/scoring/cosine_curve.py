"""The single cosine curve of calibrations written before the calibration by context (format
``polypindex-reid-calibration/1``), and its two fitting methods.

A :class:`CosineCalibration` maps a cosine to P(same polyp) with one curve over all
pairs, within and across procedures alike (:func:`model.scoring.calibration.fit_calibration`
fits it). New models carry a :class:`model.scoring.calibration.Calibration` by
context instead; this format is still read, as the within-procedure context with a
warning. numpy only (serving layer).

- ``platt``: ``p = sigmoid(a · cosine + b)`` (logistic regression on the cosine,
  Newton's method, Platt's smoothed targets);
- ``isotonic``: a non-decreasing step function fitted by pool-adjacent-violators,
  interpolated linearly between the pooled blocks' mean cosines.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.contexts import Curve

__all__ = ["COSINE_FORMAT", "EPS", "METHODS", "CosineCalibration", "fit_isotonic", "fit_platt"]

COSINE_FORMAT = "polypindex-reid-calibration/1"
METHODS = ("platt", "isotonic")
# Calibrated probabilities are kept inside [EPS, 1 − EPS] (finite log loss).
EPS = 1e-4


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


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
        same-polyp pairs (non-decreasing); :meth:`CosineCalibration.probability`
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
class CosineCalibration:
    """One curve from cosine similarity to P(same polyp) over all pairs, with its
    best-F1 threshold (format ``/1``; what models trained before the calibration by context carry).

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

    def curve(self) -> Curve:
        """The same map as a :class:`~model.scoring.contexts.Curve` on the cosine."""
        if self.method == "isotonic":
            return Curve("isotonic", ("cosine",), dict(self.params))
        a, b = float(self.params["a"]), float(self.params["b"])
        params = {"mean": [0.0], "scale": [1.0], "coef": [a], "intercept": b}
        return Curve("logistic", ("cosine",), params)

    def to_dict(self) -> dict[str, Any]:
        return {"format": COSINE_FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> CosineCalibration:
        """Raises InvalidInputError on anything but a dict written by :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("format") != COSINE_FORMAT:
            raise InvalidInputError(f"not a {COSINE_FORMAT} calibration")
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
    def from_json(cls, text: str) -> CosineCalibration:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInputError(f"calibration is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
