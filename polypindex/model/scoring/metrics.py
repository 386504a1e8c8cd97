"""Ranking and binary-classification metrics, numpy only (no scikit-learn at serving time).

The ranking metrics follow scikit-learn's conventions exactly, ties included:

- :func:`average_precision` equals ``sklearn.metrics.average_precision_score``:
  items with equal scores form one threshold, so a tied block counts as
  retrieved all at once (the result does not depend on the input order).
- :func:`roc_auc` equals ``sklearn.metrics.roc_auc_score``: a tied block is a
  diagonal segment of the ROC curve (half credit for tied positive/negative pairs).

The binary-classification and calibration metrics are those of the size and
histology probes. Tests in ``tests/model/test_evaluation.py`` and
``tests/probes/test_probe_metrics.py`` show equality with scikit-learn and
torchmetrics on the same inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError

# --------------------------------------------------------------------------- ranking curves


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten scores (N,) and binary labels (N,) → (float64, float64)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise InvalidInputError(
            f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}"
        )
    if s.size == 0:
        raise InvalidInputError("scores and labels are empty")
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("scores contain NaN or infinite values")
    if y.dtype == np.bool_:
        y01 = y.astype(np.float64)
    else:
        yf = y.astype(np.float64)
        if not np.all((yf == 0) | (yf == 1)):
            raise InvalidInputError("labels must be binary (0/1 or bool)")
        y01 = yf
    return s, y01


def _binary_clf_curve(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at each distinct threshold, highest first.

    Args:
        scores: (N,) float64 scores.
        labels: (N,) float64 in {0, 1}.

    Returns:
        ``(fps, tps, thresholds)``, each (T,) with T the number of distinct
        scores; predicting ``score >= thresholds[t]`` gives ``fps[t]`` false and
        ``tps[t]`` true positives.
    """
    order = np.argsort(scores, kind="mergesort")[::-1]
    s = scores[order]
    y = labels[order]
    distinct = np.flatnonzero(np.diff(s))
    threshold_idxs = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[threshold_idxs]
    fps = 1.0 + threshold_idxs - tps
    return fps, tps, s[threshold_idxs]


def _positive_clf_curve(
    scores: np.ndarray, labels: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_binary_clf_curve` of validated input with at least one positive label
    (else an InvalidInputError saying that ``what`` needs one)."""
    fps, tps, thresholds = _binary_clf_curve(*_check_binary(scores, labels))
    if tps[-1] <= 0:
        raise InvalidInputError(f"{what} needs at least one positive label")
    return fps, tps, thresholds


def roc_curve(
    scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve, as ``sklearn.metrics.roc_curve`` computes it.

    Args:
        scores: (N,) scores, higher = more likely positive.
        labels: (N,) binary labels (0/1 or bool); both classes must be present.
        drop_intermediate: drop collinear points that do not change the curve
            (scikit-learn's default).

    Returns:
        ``(fpr, tpr, thresholds)``, each (T+1,): the curve starts at (0, 0) with
        threshold ``+inf``; ``thresholds`` decrease.

    Raises:
        InvalidInputError: malformed input, or only one class present.
    """
    s, y = _check_binary(scores, labels)
    fps, tps, thresholds = _binary_clf_curve(s, y)
    if tps[-1] <= 0 or fps[-1] <= 0:
        raise InvalidInputError("ROC needs both positive and negative labels")
    if drop_intermediate and fps.shape[0] > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def precision_recall_curve(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, as ``sklearn.metrics.precision_recall_curve`` computes it.

    Args:
        scores: (N,) scores, higher = more likely positive.
        labels: (N,) binary labels (0/1 or bool) with at least one positive.

    Returns:
        ``(precision, recall, thresholds)``: precision and recall are (T+1,),
        thresholds (T,) increasing; ``precision[t]``/``recall[t]`` are for
        predicting ``score >= thresholds[t]``; the last point is (recall 0,
        precision 1) with no threshold.

    Raises:
        InvalidInputError: malformed input, or no positive label.
    """
    fps, tps, thresholds = _positive_clf_curve(scores, labels, "precision-recall")
    precision = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of a ranking (sklearn's ``average_precision_score``).

    ``AP = Σ_t (R_t − R_{t−1}) P_t`` over distinct score thresholds; tied items
    are retrieved together.

    Args:
        scores: (N,) scores, higher = ranked first.
        labels: (N,) binary relevance (0/1 or bool) with at least one positive.

    Returns:
        AP in [0, 1].

    Raises:
        InvalidInputError: malformed input, or no positive label.
    """
    precision, recall, _ = precision_recall_curve(scores, labels)
    return _curve_average_precision(precision, recall)


def reference_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision under the reference implementation's rule (torchmetrics).

    ``torchmetrics.functional.retrieval_average_precision`` (1.9.0, used through
    ``RetrievalMAP`` by the reference) first sets ``target = where(preds > 0, target, 0)``:
    a relevant item whose score is ≤ 0 stops counting as relevant. The AP is then the
    mean, over the relevant items that remain, of the precision at their rank; the
    dropped ones count neither as misses nor in the denominator. When no relevant
    item scores > 0 the AP is 0. Ties are a block here, as in :func:`average_precision`
    (torchmetrics orders them by ``topk``, which is unspecified for ties).

    With every relevant score > 0 this equals :func:`average_precision`. Otherwise the
    dropped items rank below every kept one, where precision is usually lowest, so the
    result is usually higher; not always (kept ``[0.2]`` at rank 5 and a dropped one at
    rank 6 give 0.200 here, 0.267 under :func:`average_precision`).

    Args:
        scores: (N,) scores (cosine similarities in the retrieval protocol).
        labels: (N,) binary relevance with at least one positive.

    Returns:
        AP in [0, 1].

    Raises:
        InvalidInputError: malformed input, or no positive label.
    """
    s, y = _check_binary(scores, labels)
    if not np.any(y > 0):
        raise InvalidInputError("reference_average_precision needs at least one positive label")
    kept = (y > 0) & (s > 0)
    if not np.any(kept):
        return 0.0
    return average_precision(s, kept)


def _curve_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """``Σ_t (R_t − R_{t−1}) P_t`` of a :func:`precision_recall_curve` (recall decreasing)."""
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under y(x) for (T,) arrays (numpy 1.26 lacks ``np.trapezoid``)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (sklearn's ``roc_auc_score``; ties count half).

    Args:
        scores: (N,) scores.
        labels: (N,) binary labels with both classes present.

    Returns:
        AUROC in [0, 1].

    Raises:
        InvalidInputError: malformed input, or only one class present.
    """
    fpr, tpr, _ = roc_curve(scores, labels, drop_intermediate=True)
    return _trapezoid(fpr, tpr)


# --------------------------------------------------------------------------- chance


def chance_average_precision(n_items: int, n_relevant: int) -> float:
    """Expected AP of a uniformly random ranking of ``n_items`` with ``n_relevant`` relevant.

    Writing ``AP = (1/R) Σ_k rel_k · (Σ_{j≤k} rel_j) / k`` and taking
    expectations with ``E[rel_k] = R/n`` and ``E[rel_j rel_k] = R(R−1)/(n(n−1))``
    for ``j ≠ k``::

        E[AP] = H_n / n + (R − 1)(n − H_n) / (n (n − 1)),   H_n = Σ_{k=1}^n 1/k

    (``1`` when ``n = 1``; ``H_n/n`` when ``R = 1``; ``1`` when ``R = n``).

    Args:
        n_items: ranked items n ≥ 1.
        n_relevant: relevant items R, 1 ≤ R ≤ n.

    Returns:
        The expected AP.

    Raises:
        InvalidInputError: n or R out of range.
    """
    n, r = int(n_items), int(n_relevant)
    if n < 1 or not 1 <= r <= n:
        raise InvalidInputError(f"need 1 <= n_relevant <= n_items, got {n_relevant}, {n_items}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1, dtype=np.float64)))
    return harmonic / n + (r - 1) * (n - harmonic) / (n * (n - 1))


# --------------------------------------------------------------------------- binary classification (probes)


def _check_labels01(values: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values).reshape(-1)
    if v.dtype == np.bool_:
        return v.astype(np.int64)
    f = v.astype(np.float64)
    if not np.all((f == 0) | (f == 1)):
        raise InvalidInputError(f"{name} must be binary (0/1 or bool)")
    return f.astype(np.int64)


def _ratio(num: int, den: int, what: str) -> tuple[float | None, str | None]:
    if den == 0:
        return None, f"undefined: {what} is 0"
    return num / den, None


def binary_classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None = None
) -> dict[str, Any]:
    """Confusion counts and the usual rates of a binary decision (positive = 1).

    Definitions (each equals scikit-learn on the same inputs; see
    ``tests/probes/test_probe_metrics.py``):

    - ``accuracy`` = ``accuracy_score``;
    - ``macro_f1`` = ``f1_score(average="macro", labels=[0, 1], zero_division=0)``:
      the mean of the F1 of class 1 and of class 0 (a class never present nor
      predicted has F1 0);
    - ``sensitivity`` = TP/(TP+FN) = ``recall_score``;
    - ``specificity`` = TN/(TN+FP) = ``recall_score(pos_label=0)``;
    - ``ppv`` = TP/(TP+FP) = ``precision_score``; ``npv`` = TN/(TN+FN) =
      ``precision_score(pos_label=0)``;
    - ``auroc`` = ``roc_auc_score(y_true, y_score)`` when scores are given.

    A rate whose denominator is 0 (or an AUROC with one class only) is
    ``None``, with the reason under ``undefined[name]``.

    Args:
        y_true: (N,) true labels in {0, 1}.
        y_pred: (N,) predicted labels in {0, 1}.
        y_score: optional (N,) scores for AUROC (higher = more likely 1).

    Returns:
        A JSON-ready dict: ``n``, ``tp``, ``fp``, ``tn``, ``fn``, the rates above
        and ``undefined``.
    """
    t = _check_labels01(y_true, "y_true")
    p = _check_labels01(y_pred, "y_pred")
    if t.shape != p.shape:
        raise InvalidInputError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise InvalidInputError("binary_classification_metrics needs at least one item")
    tp = int(np.count_nonzero((t == 1) & (p == 1)))
    fp = int(np.count_nonzero((t == 0) & (p == 1)))
    tn = int(np.count_nonzero((t == 0) & (p == 0)))
    fn = int(np.count_nonzero((t == 1) & (p == 0)))
    out: dict[str, Any] = {"n": int(t.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    undefined: dict[str, str] = {}
    for name, num, den, what in (
        ("sensitivity", tp, tp + fn, "the number of positives (TP+FN)"),
        ("specificity", tn, tn + fp, "the number of negatives (TN+FP)"),
        ("ppv", tp, tp + fp, "the number of positive predictions (TP+FP)"),
        ("npv", tn, tn + fn, "the number of negative predictions (TN+FN)"),
    ):
        out[name], reason = _ratio(num, den, what)
        if reason:
            undefined[name] = reason
    out["accuracy"] = (tp + tn) / t.size
    f1_pos = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if (2 * tn + fn + fp) else 0.0
    out["f1_positive"] = f1_pos
    out["f1_negative"] = f1_neg
    out["macro_f1"] = (f1_pos + f1_neg) / 2.0
    if y_score is not None:
        if tp + fn == 0 or tn + fp == 0:
            out["auroc"] = None
            undefined["auroc"] = "undefined: only one class is present in y_true"
        else:
            out["auroc"] = roc_auc(np.asarray(y_score, dtype=np.float64), t)
    out["undefined"] = undefined
    return out


CALIBRATION_BINS = 15


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> dict[str, np.ndarray]:
    """Equal-width bins of the predicted P(positive) for calibration.

    Bin ``k`` (``k = 0 … n_bins−1``) holds ``k/n_bins ≤ p < (k+1)/n_bins``; the
    last bin also holds ``p = 1``.

    Args:
        probabilities: (N,) predicted P(positive) in [0, 1].
        labels: (N,) true labels in {0, 1}.
        n_bins: number of bins.

    Returns:
        ``count`` (n_bins,) items per bin, ``confidence`` mean predicted
        probability per bin and ``frequency`` observed fraction of positives per
        bin (both NaN for empty bins), ``edges`` (n_bins+1,).
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = _check_labels01(labels, "labels").astype(np.float64)
    if p.shape != y.shape or p.size == 0:
        raise InvalidInputError(
            f"probabilities and labels must be non-empty and of equal length, got {p.size} and {y.size}"
        )
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidInputError("probabilities must lie in [0, 1]")
    if n_bins < 1:
        raise InvalidInputError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=p, minlength=n_bins) / count
        frequency = np.bincount(idx, weights=y, minlength=n_bins) / count
    return {"count": count, "confidence": confidence, "frequency": frequency, "edges": edges}


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> float:
    """Expected calibration error of P(positive) over equal-width bins.

    ``ECE = Σ_k (n_k / N) · |freq_k − conf_k|`` over the bins of
    :func:`reliability_bins` (15 by default), where ``conf_k`` is the mean
    predicted P(positive) and ``freq_k`` the fraction of positives in bin ``k``.
    This is torchmetrics' ``binary_calibration_error(norm="l1")`` (which puts
    ``p = 1`` exactly in a bin of its own; here it joins the last bin).

    Args:
        probabilities: (N,) predicted P(positive) in [0, 1].
        labels: (N,) true labels in {0, 1}.
        n_bins: number of equal-width bins.

    Returns:
        ECE in [0, 1].
    """
    bins = reliability_bins(probabilities, labels, n_bins)
    used = bins["count"] > 0
    weights = bins["count"][used] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["frequency"][used] - bins["confidence"][used])))
