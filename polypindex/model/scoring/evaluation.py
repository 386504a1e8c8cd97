"""Evaluation (docs/method.md#evaluation-protocols): retrieval (mAP, hit rate) and
re-identification (AUROC,
AUPR, curves) over tracklet embeddings, the chance and colour-histogram reference rows,
and the best-F1 re-ID threshold stored with a model.

Numpy only: the serving install has neither torch, scikit-learn nor matplotlib (the
figures are drawn by :mod:`training.plots`). The scikit-learn-exact ranking metrics
(AP, AUROC, curves) and the probes' binary and calibration metrics live in
:mod:`model.scoring.metrics` and are re-exported here.

Tests in ``tests/model/test_evaluation.py`` show equality with scikit-learn and
torchmetrics on the same inputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.metrics import (
    _curve_average_precision,
    _positive_clf_curve,
    _trapezoid,
    average_precision,
    chance_average_precision,
    precision_recall_curve,
    reference_average_precision,
    roc_curve,
)
from polypindex.model.scoring.reid import reid_score

MAP_RULES = ("ours", "reference", "both")
"""mAP rules of :func:`retrieval_metrics`: ``ours`` (scikit-learn's AP), ``reference``
(the reference implementation's torchmetrics rule, :func:`model.scoring.metrics.reference_average_precision`)
or ``both``; docs/method.md#evaluation-protocols."""
HISTOGRAM_BINS_PER_CHANNEL = 8
HISTOGRAM_DIM = HISTOGRAM_BINS_PER_CHANNEL**3
_NORM_EPS = 1e-12


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
    fps, tps, thresholds = _positive_clf_curve(scores, labels, "best_f1_threshold")
    fns = tps[-1] - tps
    f1 = 2.0 * tps / (2.0 * tps + fps + fns)
    best = int(np.argmax(f1))  # thresholds decrease, so the first maximum is the highest
    return float(thresholds[best]), float(f1[best])


__all__ = [
    "HISTOGRAM_DIM",
    "MAP_RULES",
    "ReidResult",
    "RetrievalResult",
    "best_f1_threshold",
    "chance_retrieval_map",
    "color_histogram_embedding",
    "cosine_similarity_matrix",
    "pair_scores",
    "reid_metrics",
    "retrieval_metrics",
]


# --------------------------------------------------------------------------- chance


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
    """Retrieval over tracklets (docs/method.md#evaluation-protocols).

    Attributes:
        map: mean AP over the scored queries.
        hit_rate: ``{K: fraction of scored queries with a relevant item in the top K}``.
        n_queries: queries scored (those with at least one other item of their identity).
        n_excluded_queries: queries with no other item of their identity,
            excluded from every mean (an error in the reference protocol).
        per_query_ap: (N,) AP of each item as a query; NaN for excluded queries.
        map_reference: mAP under the reference's torchmetrics rule (same-identity items
            with cosine ≤ 0 dropped; :func:`model.scoring.metrics.reference_average_precision`),
            when asked for (``map_rule`` ``reference`` or ``both``), else ``None``.
        map_rule: the rule(s) asked for, one of :data:`MAP_RULES`.
    """

    map: float
    hit_rate: dict[int, float]
    n_queries: int
    n_excluded_queries: int
    per_query_ap: np.ndarray = field(repr=False, compare=False)
    map_reference: float | None = None
    map_rule: str = "ours"

    def to_json_dict(self) -> dict[str, Any]:
        """Plain-JSON summary: ``map``, ``hit_rate`` (keys as strings, e.g. ``"1"``),
        ``n_queries``, ``n_excluded_queries``, and with a ``reference``/``both`` rule
        ``map_reference`` and ``map_rule``; ``per_query_ap`` is left out.

        ``map`` is always our rule's mAP, so JSON readers never confuse the two."""
        out: dict[str, Any] = {
            "map": float(self.map),
            "hit_rate": {str(k): float(v) for k, v in self.hit_rate.items()},
            "n_queries": int(self.n_queries),
            "n_excluded_queries": int(self.n_excluded_queries),
        }
        if self.map_reference is not None:
            out["map_reference"] = float(self.map_reference)
            out["map_rule"] = self.map_rule
        return out


def retrieval_metrics(
    embeddings: np.ndarray,
    identities: Sequence[Hashable],
    ks: Sequence[int] = (1, 5),
    map_rule: str = "ours",
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
        map_rule: one of :data:`MAP_RULES`; ``reference``/``both`` also compute
            ``map_reference`` over the same queries (the hit rate is the same under
            both rules: torchmetrics' ``RetrievalHitRate`` drops nothing).

    Returns:
        A :class:`RetrievalResult`.

    Raises:
        InvalidInputError: malformed input, a K < 1, an unknown rule, or no query with a
            relevant item.
    """
    if map_rule not in MAP_RULES:
        raise InvalidInputError(f"map_rule must be one of {list(MAP_RULES)}, got {map_rule!r}")
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
    reference_ap = np.full(n, np.nan)
    first_rank = np.zeros(n, dtype=np.int64)  # pessimistic rank of the best relevant item
    others = ~np.eye(n, dtype=bool)
    for q in np.flatnonzero(valid):
        scores = sim[q, others[q]]
        rel = same[q, others[q]]
        per_query_ap[q] = average_precision(scores, rel)
        if map_rule != "ours":
            reference_ap[q] = reference_average_precision(scores, rel)
        best = scores[rel].max()
        first_rank[q] = 1 + int(np.count_nonzero(~rel & (scores >= best)))
    hit_rate = {k: float(np.mean(first_rank[valid] <= k)) for k in ks}
    return RetrievalResult(
        map=float(np.mean(per_query_ap[valid])),
        hit_rate=hit_rate,
        n_queries=int(np.count_nonzero(valid)),
        n_excluded_queries=int(n - np.count_nonzero(valid)),
        per_query_ap=per_query_ap,
        map_reference=None if map_rule == "ours" else float(np.mean(reference_ap[valid])),
        map_rule=map_rule,
    )


@dataclass(frozen=True)
class ReidResult:
    """Pairwise re-identification (docs/method.md#evaluation-protocols).

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
    scores = reid_score(sim[iu, ju])
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
    roc = dict(zip(("fpr", "tpr", "roc_thresholds"), roc_curve(scores, same), strict=True))
    pr_curve = precision_recall_curve(scores, same)
    pr = dict(zip(("precision", "recall", "pr_thresholds"), pr_curve, strict=True))
    return ReidResult(
        auroc=_trapezoid(roc["fpr"], roc["tpr"]),
        aupr=_curve_average_precision(pr["precision"], pr["recall"]),
        n_pairs=int(same.size),
        n_positive_pairs=n_pos,
        **roc,
        **pr,
    )


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
