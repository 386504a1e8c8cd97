"""Evaluation metrics of SPEC §6: retrieval (mAP, hit rate), re-identification
(AUROC, AUPR, curves), the chance and colour-histogram reference rows, and the
best-F1 re-ID threshold stored with a model.

Numpy only (matplotlib is imported lazily, with the Agg backend, by
:func:`save_curves_png`): the serving install has neither torch nor scikit-learn.
The ranking metrics follow scikit-learn's conventions exactly, ties included:

- :func:`average_precision` equals ``sklearn.metrics.average_precision_score``:
  items with equal scores form one threshold, so a tied block counts as
  retrieved all at once (the result does not depend on the input order).
- :func:`roc_auc` equals ``sklearn.metrics.roc_auc_score``: a tied block is a
  diagonal segment of the ROC curve (half credit for tied positive/negative pairs).

Tests in ``tests/model/test_evaluation.py`` show equality with scikit-learn and
torchmetrics on the same inputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.errors import InvalidInputError

HISTOGRAM_BINS_PER_CHANNEL = 8
HISTOGRAM_DIM = HISTOGRAM_BINS_PER_CHANNEL**3
_NORM_EPS = 1e-12


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
    s, y = _check_binary(scores, labels)
    fps, tps, thresholds = _binary_clf_curve(s, y)
    if tps[-1] <= 0:
        raise InvalidInputError("precision-recall needs at least one positive label")
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


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The decision threshold maximising F1 (predict positive when ``score >= threshold``).

    Candidates are the distinct scores; among equal F1 the highest threshold
    wins (the more conservative match).

    Args:
        scores: (N,) scores, e.g. sigmoid(cosine) of pairs.
        labels: (N,) binary labels with at least one positive.

    Returns:
        ``(threshold, f1)``.

    Raises:
        InvalidInputError: malformed input, or no positive label.
    """
    s, y = _check_binary(scores, labels)
    fps, tps, thresholds = _binary_clf_curve(s, y)
    if tps[-1] <= 0:
        raise InvalidInputError("best_f1_threshold needs at least one positive label")
    fns = tps[-1] - tps
    f1 = 2.0 * tps / (2.0 * tps + fps + fns)
    best = int(np.argmax(f1))  # thresholds decrease, so the first maximum is the highest
    return float(thresholds[best]), float(f1[best])


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


def _identity_codes(identities: Sequence[Hashable], n: int) -> np.ndarray:
    """Integer code (N,) per identity label (labels compared by equality)."""
    ids = list(identities)
    if len(ids) != n:
        raise InvalidInputError(f"got {len(ids)} identities for {n} embeddings")
    table: dict[Hashable, int] = {}
    return np.asarray([table.setdefault(i, len(table)) for i in ids], dtype=np.int64)


def chance_retrieval_map(identities: Sequence[Hashable]) -> float:
    """Expected retrieval mAP of random rankings (the "chance" reference row).

    Each valid query (one with another item of its identity) ranks the N − 1
    other items; its expected AP is :func:`chance_average_precision` of
    ``(N − 1, count(identity) − 1)``; the result is the mean over valid queries,
    matching the exclusion rule of :func:`retrieval_metrics`.

    Args:
        identities: N identity labels.

    Returns:
        The expected mAP.

    Raises:
        InvalidInputError: no query has a relevant item.
    """
    ids = list(identities)
    codes = _identity_codes(ids, len(ids))
    n = codes.size
    counts = np.bincount(codes)[codes]
    valid = counts >= 2
    if not np.any(valid):
        raise InvalidInputError("no identity has two or more items: retrieval is undefined")
    cache: dict[int, float] = {}
    values = [
        cache.setdefault(int(c), chance_average_precision(n - 1, int(c) - 1)) for c in counts[valid]
    ]
    return float(np.mean(values))


# --------------------------------------------------------------------------- retrieval / re-ID


def cosine_similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``embeddings``.

    Rows are L2-normalised first; an all-zero row stays zero (cosine 0 with
    everything, itself included).

    Args:
        embeddings: (N, D) array.

    Returns:
        (N, N) float64 similarities.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"embeddings must be a non-empty (N, D) array, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("embeddings contain NaN or infinite values")
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _NORM_EPS)
    return z @ z.T


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval over tracklets (SPEC §6).

    Attributes:
        map: mean AP over the scored queries.
        hit_rate: ``{K: fraction of scored queries with a relevant item in the top K}``.
        n_queries: queries scored (those with at least one other item of their identity).
        n_excluded_queries: queries with no other item of their identity,
            excluded from every mean (an error in the reference protocol).
        per_query_ap: (N,) AP of each item as a query; NaN for excluded queries.
    """

    map: float
    hit_rate: dict[int, float]
    n_queries: int
    n_excluded_queries: int
    per_query_ap: np.ndarray = field(repr=False, compare=False)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain-JSON summary: ``map``, ``hit_rate`` (keys as strings, e.g. ``"1"``),
        ``n_queries``, ``n_excluded_queries``; ``per_query_ap`` is left out."""
        return {
            "map": float(self.map),
            "hit_rate": {str(k): float(v) for k, v in self.hit_rate.items()},
            "n_queries": int(self.n_queries),
            "n_excluded_queries": int(self.n_excluded_queries),
        }


def retrieval_metrics(
    embeddings: np.ndarray, identities: Sequence[Hashable], ks: Sequence[int] = (1, 5)
) -> RetrievalResult:
    """Every item queries all others by cosine similarity; relevant = same identity.

    The query itself is excluded from its ranking. A query with no other item
    of its identity is excluded from the means and counted in
    ``n_excluded_queries``. AP handles ties as :func:`average_precision`. Hit@K
    is pessimistic about ties: a query hits when fewer than K irrelevant items
    score at least as high as its best relevant item.

    Args:
        embeddings: (N, D) embeddings (normalised here; zero rows allowed).
        identities: N identity labels (any hashables, compared by equality).
        ks: cut-offs K ≥ 1 for the hit rate.

    Returns:
        A :class:`RetrievalResult`.

    Raises:
        InvalidInputError: malformed input, a K < 1, or no query with a relevant item.
    """
    sim = cosine_similarity_matrix(embeddings)
    n = sim.shape[0]
    codes = _identity_codes(identities, n)
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise InvalidInputError(f"hit-rate cut-offs must be >= 1, got {ks}")
    same = codes[:, None] == codes[None, :]
    np.fill_diagonal(same, False)
    valid = same.any(axis=1)
    if not np.any(valid):
        raise InvalidInputError("no query has another item of its identity: retrieval is undefined")

    per_query_ap = np.full(n, np.nan)
    first_rank = np.zeros(n, dtype=np.int64)  # pessimistic rank of the best relevant item
    others = ~np.eye(n, dtype=bool)
    for q in np.flatnonzero(valid):
        scores = sim[q, others[q]]
        rel = same[q, others[q]]
        per_query_ap[q] = average_precision(scores, rel)
        best = scores[rel].max()
        first_rank[q] = 1 + int(np.count_nonzero(~rel & (scores >= best)))
    hit_rate = {k: float(np.mean(first_rank[valid] <= k)) for k in ks}
    return RetrievalResult(
        map=float(np.mean(per_query_ap[valid])),
        hit_rate=hit_rate,
        n_queries=int(np.count_nonzero(valid)),
        n_excluded_queries=int(n - np.count_nonzero(valid)),
        per_query_ap=per_query_ap,
    )


@dataclass(frozen=True)
class ReidResult:
    """Pairwise re-identification (SPEC §6).

    Attributes:
        auroc: area under the ROC curve.
        aupr: average precision (sklearn's step-wise AUPR).
        n_pairs: unordered pairs scored, N(N−1)/2.
        n_positive_pairs: pairs of the same identity.
        fpr: (T,) ROC false-positive rates (collinear points dropped).
        tpr: (T,) ROC true-positive rates.
        roc_thresholds: (T,) decreasing, starting at +inf.
        precision: (P+1,) PR-curve precision, ending at 1.
        recall: (P+1,) PR-curve recall, decreasing to 0.
        pr_thresholds: (P,) increasing.
    """

    auroc: float
    aupr: float
    n_pairs: int
    n_positive_pairs: int
    fpr: np.ndarray = field(repr=False, compare=False)
    tpr: np.ndarray = field(repr=False, compare=False)
    roc_thresholds: np.ndarray = field(repr=False, compare=False)
    precision: np.ndarray = field(repr=False, compare=False)
    recall: np.ndarray = field(repr=False, compare=False)
    pr_thresholds: np.ndarray = field(repr=False, compare=False)

    def to_json_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """Plain-JSON summary: ``auroc``, ``aupr``, ``n_pairs``, ``n_positive_pairs``.

        Args:
            include_curves: also add ``roc`` (``fpr``, ``tpr`` lists) and ``pr``
                (``precision``, ``recall`` lists); thresholds are never included
                (the ROC one starts at +inf, which is not JSON).
        """
        out: dict[str, Any] = {
            "auroc": float(self.auroc),
            "aupr": float(self.aupr),
            "n_pairs": int(self.n_pairs),
            "n_positive_pairs": int(self.n_positive_pairs),
        }
        if include_curves:
            out["roc"] = {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist()}
            out["pr"] = {"precision": self.precision.tolist(), "recall": self.recall.tolist()}
        return out


def pair_scores(
    embeddings: np.ndarray, identities: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    """Score and label of every unordered pair i < j (row-major over ``np.triu_indices``).

    Args:
        embeddings: (N, D) embeddings, N ≥ 2.
        identities: N identity labels.

    Returns:
        ``(scores, same)``: (N(N−1)/2,) sigmoid(cosine) in (0, 1) and bool same-identity.
    """
    sim = cosine_similarity_matrix(embeddings)
    n = sim.shape[0]
    if n < 2:
        raise InvalidInputError("re-identification needs at least two embeddings")
    codes = _identity_codes(identities, n)
    iu, ju = np.triu_indices(n, k=1)
    scores = 1.0 / (1.0 + np.exp(-sim[iu, ju]))
    return scores, codes[iu] == codes[ju]


def reid_metrics(embeddings: np.ndarray, identities: Sequence[Hashable]) -> ReidResult:
    """AUROC and AUPR over every unordered pair; score = sigmoid(cosine), positive = same identity.

    Args:
        embeddings: (N, D) embeddings.
        identities: N identity labels.

    Returns:
        A :class:`ReidResult` with the ROC and PR curves.

    Raises:
        InvalidInputError: malformed input, or no positive or no negative pair.
    """
    scores, same = pair_scores(embeddings, identities)
    n_pos = int(np.count_nonzero(same))
    if n_pos == 0 or n_pos == same.size:
        raise InvalidInputError(
            f"re-identification needs positive and negative pairs, got {n_pos} of {same.size} positive"
        )
    fpr, tpr, roc_thr = roc_curve(scores, same)
    precision, recall, pr_thr = precision_recall_curve(scores, same)
    return ReidResult(
        auroc=_trapezoid(fpr, tpr),
        aupr=float(max(0.0, -np.sum(np.diff(recall) * precision[:-1]))),
        n_pairs=int(same.size),
        n_positive_pairs=n_pos,
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=roc_thr,
        precision=precision,
        recall=recall,
        pr_thresholds=pr_thr,
    )


def save_curves_png(result: ReidResult, path_prefix: Path, title: str) -> list[Path]:
    """Write the ROC and PR curves as ``{path_prefix}_roc.png`` and ``{path_prefix}_pr.png``.

    Args:
        result: a :class:`ReidResult`.
        path_prefix: output path without suffix; its folder is created.
        title: shown in both plot titles.

    Returns:
        The two written paths, ROC first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path_prefix = Path(path_prefix)
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    roc_path = path_prefix.with_name(path_prefix.name + "_roc.png")
    pr_path = path_prefix.with_name(path_prefix.name + "_pr.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    try:
        ax.plot(result.fpr, result.tpr, lw=1.5, label=f"AUROC {result.auroc:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
        ax.set(
            xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01)
        )
        ax.set_title(f"{title}: ROC")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(roc_path, dpi=120)
    finally:
        plt.close(fig)

    prevalence = result.n_positive_pairs / result.n_pairs
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    try:
        ax.step(
            result.recall, result.precision, where="post", lw=1.5, label=f"AP {result.aupr:.3f}"
        )
        ax.axhline(prevalence, ls="--", lw=0.8, color="grey", label=f"prevalence {prevalence:.3f}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(f"{title}: precision-recall")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(pr_path, dpi=120)
    finally:
        plt.close(fig)
    return [roc_path, pr_path]


# --------------------------------------------------------------------------- colour histogram


def color_histogram_embedding(crops: np.ndarray, center_fraction: float = 0.2) -> np.ndarray:
    """Non-learned baseline: RGB histogram of the centre of each crop, for one tracklet.

    A crop is the box enlarged ``bbox_scale_factor`` (5) times in width and
    height, so the box itself is the central ``1/5`` of it: the central region
    of ``round(H·center_fraction) × round(W·center_fraction)`` pixels (at least
    1×1) is binned into 8×8×8 RGB bins, summed over frames, square-rooted and
    L2-normalised.

    Args:
        crops: (S, H, W, 3) uint8 RGB crops of one tracklet, S ≥ 1.
        center_fraction: side of the central region as a fraction of the crop, in (0, 1].

    Returns:
        (512,) float32, unit L2 norm; bin index ``r·64 + g·8 + b`` with 32 levels per bin.

    Raises:
        InvalidInputError: wrong shape/dtype or ``center_fraction`` out of range.
    """
    x = np.asarray(crops)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise InvalidInputError(f"crops must be a non-empty (S, H, W, 3) array, got {x.shape}")
    if x.dtype != np.uint8:
        raise InvalidInputError(f"crops must be uint8 RGB, got {x.dtype}")
    if not 0.0 < center_fraction <= 1.0:
        raise InvalidInputError(f"center_fraction must be in (0, 1], got {center_fraction!r}")
    _, h, w, _ = x.shape
    ch = max(1, round(h * center_fraction))
    cw = max(1, round(w * center_fraction))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    centre = x[:, y0 : y0 + ch, x0 : x0 + cw, :].reshape(-1, 3)
    shift = 8 - int(np.log2(HISTOGRAM_BINS_PER_CHANNEL))  # 256 levels → 8 bins: drop 5 bits
    q = (centre >> shift).astype(np.int64)
    idx = (q[:, 0] * HISTOGRAM_BINS_PER_CHANNEL + q[:, 1]) * HISTOGRAM_BINS_PER_CHANNEL + q[:, 2]
    hist = np.sqrt(np.bincount(idx, minlength=HISTOGRAM_DIM).astype(np.float64))
    return (hist / np.linalg.norm(hist)).astype(np.float32)


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


def save_reliability_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    n_bins: int = CALIBRATION_BINS,
) -> Path:
    """Reliability diagram: observed fraction of positives vs mean predicted P(positive).

    Args:
        curves: ``{legend label: (probabilities (N,), labels (N,))}``; the ECE
            is added to each label.
        path: the PNG to write (its folder is created).
        title: the plot title.
        n_bins: equal-width bins.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    try:
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
        for label, (probs, ys) in curves.items():
            bins = reliability_bins(probs, ys, n_bins)
            used = bins["count"] > 0
            ece = expected_calibration_error(probs, ys, n_bins)
            ax.plot(
                bins["confidence"][used],
                bins["frequency"][used],
                marker="o",
                lw=1.2,
                label=f"{label} (ECE {ece:.3f}, n={len(np.asarray(probs).reshape(-1))})",
            )
        ax.set(
            xlabel="mean predicted P(positive)",
            ylabel="observed fraction positive",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
