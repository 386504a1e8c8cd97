"""One context's calibration and abstention rule (docs/grouping.md#calibration).

A :class:`ContextFit` is fitted on the pairs of one context (within one procedure, or
across procedures) of the fitting half of the validation procedures, and its two
operating points are chosen on the other half:

- the curve: logistic regression of "same polyp" on the context's features
  (:func:`fit_logistic`, standardised inputs, a ridge penalty, the cosine's
  coefficient constrained to be ≥ 0, so the probability never falls as the cosine
  rises);
- ``same`` when ``p ≥ same.threshold``: the lowest threshold, itself at least the
  target, whose held-out precision is at least the target, over at least
  ``min_support`` answers;
- ``different`` when ``p ≤ different.threshold``: the highest threshold, at most
  ``1 − target``, whose held-out negative predictive value is at least the target,
  likewise;
- ``uncertain`` otherwise, and everywhere when no threshold reaches the target or the
  context is not estimable (too few same-polyp pairs to fit: the probability is
  then the prior, the base rate of the fitting pairs, never an extrapolation).

numpy only (serving layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.pairs import FEATURES

__all__ = [
    "ANSWERS",
    "DEFAULT_MIN_SUPPORT",
    "DEFAULT_TARGET",
    "MIN_PAIRS_PER_CLASS",
    "ContextFit",
    "Curve",
    "Rule",
    "choose_rule",
    "context_metrics",
    "fit_context",
    "fit_logistic",
    "wilson_interval",
]

ANSWERS = ("same", "different", "uncertain")
DEFAULT_TARGET = 0.9
# an operating point needs at least this many held-out answers behind it
DEFAULT_MIN_SUPPORT = 10
# a context is estimable with at least this many same- and different-polyp fitting pairs
MIN_PAIRS_PER_CLASS = 5
RIDGE = 1.0
# probabilities of a curve stay inside [EPS, 1 - EPS]
EPS = 1e-4
WILSON_Z = 1.959963984540054  # 95 %


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); ``(0, 1)`` for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def _newton(z: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 100) -> np.ndarray:
    """Penalised logistic regression on standardised columns ``z`` (intercept last,
    unpenalised); returns the weights."""
    design = np.hstack([z, np.ones((z.shape[0], 1))])
    penalty = np.diag([ridge] * z.shape[1] + [0.0])
    prior = (y.sum() + 0.5) / (y.size + 1.0)
    w = np.zeros(design.shape[1])
    w[-1] = math.log(prior / (1.0 - prior))
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        grad = design.T @ (p - y) + penalty @ w
        hess = design.T @ (design * (p * (1.0 - p))[:, None]) + penalty + 1e-9 * np.eye(w.size)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return w


def fit_logistic(
    x: np.ndarray, y: np.ndarray, monotone: Sequence[int] = (0,), ridge: float = RIDGE
) -> dict[str, list[float] | float]:
    """``P(y | x) = σ(coef · (x − mean) / scale + intercept)`` by Newton's method with a
    ridge penalty on the standardised coefficients, each column in ``monotone``
    constrained to a coefficient ≥ 0 (a violating column is fixed at 0 and the rest
    refitted: the penalised likelihood is concave, so that is the constrained optimum).

    Returns:
        ``{"mean", "scale", "coef", "intercept"}`` (lists of the columns' values).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.size or y.size == 0 or not np.all(np.isfinite(x)):
        raise InvalidInputError(
            f"need finite (N, k) features and N labels, got {x.shape}, {y.size}"
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    active = list(range(x.shape[1]))
    while True:
        w = _newton(z[:, active], y, ridge)
        coef = np.zeros(x.shape[1])
        coef[active] = w[:-1]
        bad = [j for j in monotone if j in active and coef[j] < 0]
        if not bad:
            break
        active.remove(min(bad, key=lambda j: coef[j]))
    return {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": float(w[-1]),
    }


@dataclass(frozen=True)
class Curve:
    """A fitted map from pair features to P(same polyp).

    Attributes:
        kind: ``"logistic"`` (``mean``/``scale``/``coef``/``intercept`` over
            ``features``) or ``"isotonic"`` (``x``/``y`` knots on the cosine, read from
            calibrations written by older releases).
        features: the :data:`~model.scoring.pairs.FEATURES` it reads, in order.
        params: the parameters.
    """

    kind: str
    features: tuple[str, ...]
    params: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        unknown = set(self.features) - set(FEATURES)
        if not self.features or unknown:
            raise InvalidInputError(f"curve features must be among {FEATURES}, got {self.features}")
        k = len(self.features)
        if self.kind == "logistic":
            try:
                arrays = [
                    np.asarray(self.params[n], dtype=np.float64) for n in ("mean", "scale", "coef")
                ]
                intercept = float(self.params["intercept"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInputError(f"logistic curve parameters are malformed: {exc}") from exc
            if any(a.shape != (k,) or not np.all(np.isfinite(a)) for a in arrays) or not (
                math.isfinite(intercept) and np.all(arrays[1] > 0)
            ):
                raise InvalidInputError(f"logistic curve needs {k} finite values per parameter")
            if "cosine" in self.features and arrays[2][self.features.index("cosine")] < 0:
                raise InvalidInputError("a curve must not fall as the cosine rises")
        elif self.kind == "isotonic":
            x, y = self.params.get("x"), self.params.get("y")
            if self.features != ("cosine",) or not isinstance(x, list) or not isinstance(y, list):
                raise InvalidInputError("an isotonic curve has cosine knots x and y")
            xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if not (
                xa.size
                and xa.shape == ya.shape
                and np.all(np.isfinite(xa))
                and np.all(np.diff(xa) > 0)
                and np.all(np.diff(ya) >= 0)
            ):
                raise InvalidInputError("isotonic knots must be finite and increasing")
        else:
            raise InvalidInputError(f"curve kind must be logistic or isotonic, got {self.kind!r}")

    def probability(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(same) of (N, k) feature rows (a (k,) row gives a (1,) array)."""
        rows = np.asarray(x, dtype=np.float64).reshape(-1, len(self.features))
        if self.kind == "isotonic":
            p = np.interp(rows[:, 0], self.params["x"], self.params["y"])
        else:
            z = (rows - np.asarray(self.params["mean"])) / np.asarray(self.params["scale"])
            p = _sigmoid(z @ np.asarray(self.params["coef"]) + float(self.params["intercept"]))
        return np.clip(p, EPS, 1.0 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "features": list(self.features), "params": self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curve:
        return cls(str(data["kind"]), tuple(data["features"]), dict(data["params"]))


@dataclass(frozen=True)
class Rule:
    """One answer's operating point, chosen on the held-out (operating-point) pairs.

    Attributes:
        answer: ``"same"`` (``p ≥ threshold``) or ``"different"`` (``p ≤ threshold``).
        threshold: the probability threshold, or ``None`` when no threshold reaches
            the target (the answer is then never given).
        value: the held-out precision (``same``) or negative predictive value
            (``different``) at the threshold.
        interval: its 95 % Wilson interval.
        n: held-out answers at the threshold; ``correct``: how many were right.
        reason: why there is no threshold (``None`` when there is one).
    """

    answer: str
    threshold: float | None = None
    value: float | None = None
    interval: tuple[float, float] | None = None
    n: int = 0
    correct: int = 0
    reason: str | None = None

    def gives(self, p: float) -> bool:
        if self.threshold is None:
            return False
        return p >= self.threshold if self.answer == "same" else p <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "interval": None if self.interval is None else list(self.interval)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        interval = data.get("interval")
        return cls(
            answer=str(data["answer"]),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            value=None if data.get("value") is None else float(data["value"]),
            interval=None if interval is None else (float(interval[0]), float(interval[1])),
            n=int(data.get("n", 0)),
            correct=int(data.get("correct", 0)),
            reason=data.get("reason"),
        )


def choose_rule(
    answer: str,
    probabilities: np.ndarray,
    same: np.ndarray,
    target: float = DEFAULT_TARGET,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Rule:
    """The operating point of ``answer`` on held-out pairs: for ``same`` the lowest
    distinct probability ``t ≥ target`` whose pairs ``p ≥ t`` have precision ≥
    ``target``, for ``different`` the highest ``t ≤ 1 − target`` whose pairs ``p ≤ t``
    have NPV ≥ ``target``; each over at least ``min_support`` pairs. The bound on
    ``t`` keeps the answers at the threshold as good as the target, not only their
    mean (the probabilities are calibrated: ``p`` is the local precision)."""
    if answer not in ("same", "different"):
        raise InvalidInputError(f"a rule answers same or different, got {answer!r}")
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = np.asarray(same, dtype=bool).reshape(-1)
    what = "precision" if answer == "same" else "negative predictive value"
    if p.size == 0:
        return Rule(answer, reason=f"no held-out pairs to measure the {what} on")
    sign = -1.0 if answer == "same" else 1.0  # walk from the confident end
    order = np.argsort(sign * p, kind="stable")
    ps, right = p[order], (y if answer == "same" else ~y)[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), ps.size - 1]  # end of each distinct p
    n = (last + 1).astype(np.int64)
    correct = np.cumsum(right)[last].astype(np.int64)
    value = correct / n
    # the threshold itself must reach the target too: a cumulative precision of 0.9
    # reached by confident answers would otherwise let through answers at p = 0.2
    at = ps[last]
    reaches = at >= target if answer == "same" else at <= 1.0 - target
    ok = np.flatnonzero((value >= target) & (n >= min_support) & reaches)
    if ok.size == 0:
        rel = "≥" if answer == "same" else "≤"
        bound = target if answer == "same" else 1.0 - target
        inside = np.flatnonzero(reaches)
        n_inside = int(n[inside[-1]]) if inside.size else 0
        supported = inside[n[inside] >= min_support]
        if supported.size == 0:
            best = (
                f"{n_inside} held-out pairs have p {rel} {bound:g} (at least {min_support} needed)"
            )
        else:
            k = int(supported[np.argmax(value[supported])])
            best = f"best {value[k]:.3f} at p {rel} {ps[last[k]]:.3f} over {n[k]} pairs"
        return Rule(
            answer,
            reason=(
                f"no threshold {rel} {bound:g} reaches a {what} of {target:g} on the "
                f"{p.size} held-out pairs ({int(y.sum())} same polyp): {best}"
            ),
        )
    k = int(ok[-1])  # the furthest from the confident end: the most answers
    return Rule(
        answer,
        threshold=float(ps[last[k]]),
        value=float(value[k]),
        interval=wilson_interval(int(correct[k]), int(n[k])),
        n=int(n[k]),
        correct=int(correct[k]),
    )


@dataclass(frozen=True)
class ContextFit:
    """The calibration and abstention rule of one context.

    Attributes:
        name: ``within``, ``within_cosine`` (within one procedure, cosine only: for
            pairs whose time or boxes are not known) or ``cross``.
        estimable: whether a curve could be fitted (enough same- and different-polyp
            pairs); if not, every probability is ``prior`` and every answer uncertain.
        prior: the same-polyp base rate of the fitting pairs (0 without any).
        curve: the fitted curve (``None`` when not estimable).
        same / different: the operating points.
        n_pairs / n_positive: pairs and same-polyp pairs, ``{"fit", "operating"}``.
        metrics: held-out (operating half) ``ece``, ``brier``, ``brier_base_rate``,
            ``uncertain_share``.
        reason: why it is not estimable.
        legacy: read from a calibration written before contexts existed.
    """

    name: str
    estimable: bool
    prior: float
    curve: Curve | None
    same: Rule
    different: Rule
    n_pairs: dict[str, int] = field(default_factory=dict)
    n_positive: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    legacy: bool = False

    @property
    def features(self) -> tuple[str, ...]:
        return self.curve.features if self.curve is not None else ("cosine",)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(same polyp) of (N, k) rows of :attr:`features` (the prior when not estimable)."""
        if self.curve is None:
            rows = np.asarray(x, dtype=np.float64).reshape(-1, len(self.features))
            return np.full(rows.shape[0], float(self.prior))
        return self.curve.probability(x)

    def answer(self, p: float) -> str:
        """``same``, ``different`` or ``uncertain`` for a probability of this context."""
        if not self.estimable:
            return "uncertain"
        same, different = self.same.gives(p), self.different.gives(p)
        if same and not different:
            return "same"
        if different and not same:
            return "different"
        return "uncertain"

    @property
    def reasons(self) -> list[str]:
        """Why answers of this context are limited (empty when both can be given)."""
        if not self.estimable:
            return [self.reason or f"{self.name}: not estimable"]
        out = [
            f"{self.name}: {r.answer} is never answered: {r.reason}"
            for r in (self.same, self.different)
            if r.reason
        ]
        if self.legacy:
            out.insert(0, f"{self.name}: {self.reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "estimable": self.estimable,
            "prior": self.prior,
            "curve": None if self.curve is None else self.curve.to_dict(),
            "same": self.same.to_dict(),
            "different": self.different.to_dict(),
            "n_pairs": dict(self.n_pairs),
            "n_positive": dict(self.n_positive),
            "metrics": dict(self.metrics),
            "reason": self.reason,
            "legacy": self.legacy,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContextFit:
        curve = data.get("curve")
        return cls(
            name=str(data["name"]),
            estimable=bool(data["estimable"]),
            prior=float(data["prior"]),
            curve=None if curve is None else Curve.from_dict(curve),
            same=Rule.from_dict(data["same"]),
            different=Rule.from_dict(data["different"]),
            n_pairs={k: int(v) for k, v in dict(data.get("n_pairs") or {}).items()},
            n_positive={k: int(v) for k, v in dict(data.get("n_positive") or {}).items()},
            metrics=dict(data.get("metrics") or {}),
            reason=data.get("reason"),
            legacy=bool(data.get("legacy", False)),
        )


def context_metrics(fit: ContextFit, x: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    """ECE, Brier score, the base-rate predictor's Brier score (the fit's prior), the
    answers and the share of uncertain ones of ``fit`` on pairs ``(x, same)``."""
    y = np.asarray(same, dtype=bool)
    if y.size == 0:
        return {"n": 0}
    p = fit.probability(x)
    answers = [fit.answer(float(v)) for v in p]
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "ece": expected_calibration_error(p, y.astype(np.int64)),
        "brier": float(np.mean((p - y) ** 2)),
        "brier_base_rate": float(np.mean((fit.prior - y) ** 2)),
        "answers": {a: int(sum(v == a for v in answers)) for a in ANSWERS},
        "uncertain_share": float(np.mean([v == "uncertain" for v in answers])),
    }


def fit_context(
    name: str,
    features: Sequence[str],
    fit: tuple[np.ndarray, np.ndarray],
    operating: tuple[np.ndarray, np.ndarray],
    target: float = DEFAULT_TARGET,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> ContextFit:
    """Fit one context: the curve on ``fit = (x, same)``, the operating points on
    ``operating = (x, same)``; ``x`` columns are ``features``."""
    if not 0.5 < target < 1.0:
        raise InvalidInputError(f"the target precision must be in (0.5, 1), got {target}")
    (xf, yf), (xo, yo) = fit, operating
    xf, xo = np.asarray(xf, dtype=np.float64), np.asarray(xo, dtype=np.float64)
    yf, yo = np.asarray(yf, dtype=bool), np.asarray(yo, dtype=bool)
    n_pairs = {"fit": int(yf.size), "operating": int(yo.size)}
    n_positive = {"fit": int(yf.sum()), "operating": int(yo.sum())}
    prior = float(yf.mean()) if yf.size else 0.0
    pos, neg = int(yf.sum()), int((~yf).sum())
    if min(pos, neg) < MIN_PAIRS_PER_CLASS:
        reason = (
            f"{name}: not estimable: the fitting pairs hold {pos} same-polyp and {neg} "
            f"different-polyp pairs (at least {MIN_PAIRS_PER_CLASS} of each needed); "
            f"the probability is the prior {prior:.3g}, not an estimate"
        )
        none = f"the {name} context is not estimable"
        return ContextFit(
            name,
            False,
            prior,
            None,
            Rule("same", reason=none),
            Rule("different", reason=none),
            n_pairs,
            n_positive,
            reason=reason,
        )
    monotone = [list(features).index("cosine")] if "cosine" in features else []
    curve = Curve("logistic", tuple(features), fit_logistic(xf, yf, monotone))
    po = curve.probability(xo) if yo.size else np.zeros(0)
    provisional = ContextFit(
        name,
        True,
        prior,
        curve,
        choose_rule("same", po, yo, target, min_support),
        choose_rule("different", po, yo, target, min_support),
        n_pairs,
        n_positive,
    )
    metrics = {"operating": context_metrics(provisional, xo, yo), "target": target}
    metrics["fit"] = context_metrics(provisional, xf, yf)
    return replace(provisional, metrics=metrics)
