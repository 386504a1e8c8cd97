"""Evaluation metrics (docs/method.md#evaluation-protocols) against scikit-learn, torchmetrics,
hand-computed
cases and the closed-form chance AP."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.retrieval import cosine_matrix, tie_free_cosines, torchmetrics_retrieval

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.evaluation import (
    HISTOGRAM_DIM,
    RetrievalResult,
    best_f1_threshold,
    chance_retrieval_map,
    color_histogram_embedding,
    reid_metrics,
    retrieval_metrics,
)
from polypindex.model.scoring.metrics import (
    average_precision,
    chance_average_precision,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)
from polypindex.training.plots import save_curves_png

ROOT = Path(__file__).resolve().parents[2]


def _random_set(
    seed: int, n: int = 30, dim: int = 8, n_ids: int = 9
) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    ids = [f"p{int(i)}" for i in rng.integers(0, n_ids, size=n)]
    return emb, ids


def _angles_set(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# --------------------------------------------------------------------------- vs references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_equals_torchmetrics(seed: int) -> None:
    torch, retrieval = torchmetrics_retrieval()
    emb, ids = _random_set(seed)
    sim = tie_free_cosines(emb)
    n = len(ids)
    off = ~np.eye(n, dtype=bool)
    # torchmetrics (1.9) zeroes the relevance of items scored <= 0, so rank by 1 + cosine
    # (> 0, same order) to compare the metric, not that convention
    preds = torch.from_numpy(1.0 + sim[off])
    assert bool((preds > 0).all())
    target = torch.from_numpy((np.asarray(ids)[:, None] == np.asarray(ids)[None, :])[off])
    indexes = torch.from_numpy(np.repeat(np.arange(n), n - 1))
    ref_map = retrieval.RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    result = retrieval_metrics(emb, ids, ks=(1, 5))

    counts = {i: ids.count(i) for i in ids}
    n_single = sum(1 for i in ids if counts[i] == 1)
    assert result.n_excluded_queries == n_single
    assert result.n_queries == n - n_single
    assert result.map == pytest.approx(float(ref_map), abs=1e-6)  # torchmetrics is float32
    for k in (1, 5):
        ref_hr = retrieval.RetrievalHitRate(top_k=k, empty_target_action="skip")(
            preds, target, indexes=indexes
        )
        assert result.hit_rate[k] == pytest.approx(float(ref_hr), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_reid_equals_sklearn_and_torchmetrics(seed: int) -> None:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("sklearn.metrics")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    emb, ids = _random_set(seed, n_ids=5)
    sim = cosine_matrix(emb)
    # a naive pair loop, independent of the implementation's triu indexing
    scores, labels = [], []
    for i, j in itertools.combinations(range(len(ids)), 2):
        scores.append(1.0 / (1.0 + np.exp(-sim[i, j])))
        labels.append(int(ids[i] == ids[j]))
    s, y = np.asarray(scores), np.asarray(labels)

    result = reid_metrics(emb, ids)
    assert result.n_pairs == len(ids) * (len(ids) - 1) // 2 == s.size
    assert result.n_positive_pairs == int(y.sum())
    assert 0 < result.n_positive_pairs < result.n_pairs
    assert result.auroc == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert result.aupr == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    st, yt = torch.from_numpy(s), torch.from_numpy(y)
    assert result.auroc == pytest.approx(float(tm.binary_auroc(st, yt)), abs=1e-6)
    assert result.aupr == pytest.approx(float(tm.binary_average_precision(st, yt)), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curves_and_scores_equal_sklearn_with_ties(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(200), 1)  # 11 distinct values: many ties
    y = (rng.random(200) < 0.3 + 0.4 * s).astype(int)
    assert average_precision(s, y) == pytest.approx(
        metrics.average_precision_score(y, s), abs=1e-12
    )
    assert roc_auc(s, y) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    for drop in (True, False):
        for mine, ref in zip(
            roc_curve(s, y, drop_intermediate=drop),
            metrics.roc_curve(y, s, drop_intermediate=drop),
            strict=True,
        ):
            np.testing.assert_allclose(mine, ref)
    for mine, ref in zip(
        precision_recall_curve(s, y), metrics.precision_recall_curve(y, s), strict=True
    ):
        np.testing.assert_allclose(mine, ref)


def test_best_f1_threshold_equals_brute_force() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    s = np.round(rng.random(120), 2)
    y = (rng.random(120) < s).astype(int)
    threshold, f1 = best_f1_threshold(s, y)
    brute = {t: metrics.f1_score(y, (s >= t).astype(int)) for t in np.unique(s)}
    best = max(brute.values())
    assert f1 == pytest.approx(best, abs=1e-12)
    assert threshold == max(t for t, v in brute.items() if np.isclose(v, best))
    assert best_f1_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0])) == (0.8, 1.0)


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_ranking_metrics() -> None:
    # ranks: neg, pos, neg, pos → AP = (1/2 + 2/4) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1])) == 0.5
    # a tied positive/negative block: retrieved together (AP 1/2), half credit in AUROC
    assert average_precision(np.array([0.4, 0.4]), np.array([1, 0])) == 0.5
    assert roc_auc(np.array([0.4, 0.4]), np.array([True, False])) == 0.5
    assert roc_auc(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 1])) == 1.0


def test_hand_computed_retrieval_and_reid() -> None:
    # four unit vectors at 0°, 10°, 25°, 45°; identities a, b, a, b (no ties).
    emb = _angles_set([0, 10, 25, 45])
    ids = ["a", "b", "a", "b"]
    result = retrieval_metrics(emb, ids, ks=(1, 2, 3))
    # q0 ranks 1(b) 2(a) 3(b) → 1/2;  q1 ranks 0(a) 2(a) 3(b) → 1/3;
    # q2 ranks 1(b) 3(b) 0(a) → 1/3;  q3 ranks 2(a) 1(b) 0(a) → 1/2.
    np.testing.assert_allclose(result.per_query_ap, [1 / 2, 1 / 3, 1 / 3, 1 / 2])
    assert result.map == pytest.approx(5 / 12)
    assert result.hit_rate == {1: 0.0, 2: 0.5, 3: 1.0}
    assert (result.n_queries, result.n_excluded_queries) == (4, 0)

    # pairs by angle gap: 10 neg, 15 neg, 20 neg, 25 pos, 35 pos, 45 neg
    reid = reid_metrics(emb, ids)
    assert (reid.n_pairs, reid.n_positive_pairs) == (6, 2)
    assert reid.auroc == pytest.approx(2 / 8)  # each positive beats only the 45° negative
    assert reid.aupr == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_queries_without_relevant_item_are_excluded_and_counted() -> None:
    emb = _angles_set([0, 5, 90, 180, 185, 270])
    ids = ["a", "a", "b", "c", "c", "d"]
    result = retrieval_metrics(emb, ids)
    assert (result.n_queries, result.n_excluded_queries) == (4, 2)
    assert np.isnan(result.per_query_ap[[2, 5]]).all()
    assert not np.isnan(result.per_query_ap[[0, 1, 3, 4]]).any()
    assert result.map == 1.0 and result.hit_rate == {1: 1.0, 5: 1.0}
    # chance uses the same exclusion: four queries, each 1 relevant among 5
    assert chance_retrieval_map(ids) == pytest.approx(chance_average_precision(5, 1))
    with pytest.raises(InvalidInputError, match="no query"):
        retrieval_metrics(emb, list("abcdef"))
    with pytest.raises(InvalidInputError, match="no identity"):
        chance_retrieval_map(list("abcdef"))


def test_hit_rate_is_pessimistic_about_ties() -> None:
    # items 1 and 2 are the same vector: for query 0 the relevant item 2 ties with item 1
    emb = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    ids = ["a", "b", "a", "c"]
    result = retrieval_metrics(emb, ids, ks=(1, 2, 3))
    # q0: {1(b), 2(a)} tied first → AP 1/2, pessimistic first rank 2;
    # q2: 1(b) first, then {0(a), 3(c)} tied → AP 1/3, first rank 3; q1, q3 excluded.
    np.testing.assert_allclose(result.per_query_ap[[0, 2]], [1 / 2, 1 / 3])
    assert (result.n_queries, result.n_excluded_queries) == (2, 2)
    assert result.hit_rate == {1: 0.0, 2: 0.5, 3: 1.0}


def test_perfect_embedding_scores_one() -> None:
    rng = np.random.default_rng(0)
    ids = [f"p{i % 6}" for i in range(24)]
    emb = np.eye(8)[[i % 6 for i in range(24)]] + 0.01 * rng.normal(size=(24, 8))
    result = retrieval_metrics(emb, ids)
    assert result.map == 1.0 and result.hit_rate == {1: 1.0, 5: 1.0}
    reid = reid_metrics(emb, ids)
    assert reid.auroc == 1.0 and reid.aupr == 1.0


def test_zero_vector_is_guarded() -> None:
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    result = retrieval_metrics(emb, ["a", "a", "b", "b"])
    assert np.isfinite(result.per_query_ap).all() and np.isfinite(result.map)
    assert np.isfinite(reid_metrics(emb, ["a", "a", "b", "b"]).auroc)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(InvalidInputError, match="identities"):
        retrieval_metrics(np.zeros((3, 2)), ["a", "a"])
    with pytest.raises(InvalidInputError, match="binary"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(InvalidInputError, match="positive"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(InvalidInputError, match="both"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(InvalidInputError, match="positive and negative"):
        reid_metrics(np.eye(3), ["a", "b", "c"])


# --------------------------------------------------------------------------- chance


def test_chance_ap_closed_form_edge_cases_and_exact_enumeration() -> None:
    assert chance_average_precision(1, 1) == 1.0
    assert chance_average_precision(9, 9) == pytest.approx(1.0)
    assert chance_average_precision(4, 1) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # exact: every placement of R relevant items among n positions is equally likely
    for n, r in [(5, 2), (6, 3), (7, 1)]:
        aps = []
        for pos in itertools.combinations(range(1, n + 1), r):
            aps.append(np.mean([(i + 1) / p for i, p in enumerate(pos)]))
        assert chance_average_precision(n, r) == pytest.approx(float(np.mean(aps)), abs=1e-12)
    with pytest.raises(InvalidInputError):
        chance_average_precision(3, 0)
    with pytest.raises(InvalidInputError):
        chance_average_precision(3, 4)


@pytest.mark.parametrize(("n", "r"), [(10, 1), (20, 3), (39, 4), (50, 25)])
def test_chance_ap_matches_monte_carlo(n: int, r: int) -> None:
    rng = np.random.default_rng(n * 100 + r)
    trials = 20_000
    ranks = np.argsort(rng.random((trials, n)), axis=1)[:, :r] + 1  # ranks of relevant items
    ranks.sort(axis=1)
    ap = np.mean(np.arange(1, r + 1) / ranks, axis=1)
    assert chance_average_precision(n, r) == pytest.approx(float(ap.mean()), abs=0.01)


def test_chance_map_matches_random_embeddings() -> None:
    ids = [f"p{i % 8}" for i in range(40)]  # 8 polyps × 5 tracklets
    maps = [
        retrieval_metrics(np.random.default_rng(seed).normal(size=(40, 16)), ids).map
        for seed in range(8)
    ]
    chance = chance_retrieval_map(ids)
    assert chance == pytest.approx(chance_average_precision(39, 4))
    assert float(np.mean(maps)) == pytest.approx(chance, abs=0.04)


# --------------------------------------------------------------------------- colour histogram


def test_color_histogram_is_normalised_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)
    h = color_histogram_embedding(crops)
    assert h.shape == (HISTOGRAM_DIM,) == (512,)
    assert h.dtype == np.float32 and (h >= 0).all()
    assert float(np.linalg.norm(h)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(h, color_histogram_embedding(crops.copy()))
    # repeating every frame scales the counts, which normalisation removes
    np.testing.assert_allclose(
        color_histogram_embedding(np.concatenate([crops, crops])), h, atol=1e-7
    )


def test_color_histogram_reads_only_the_centre() -> None:
    crops = np.zeros((2, 50, 50, 3), dtype=np.uint8)
    crops[:, 20:30, 20:30] = (255, 0, 0)  # exactly the central 10×10 = 50·0.2
    h = color_histogram_embedding(crops)
    assert h[7 * 64] == pytest.approx(1.0) and np.count_nonzero(h) == 1
    framed = crops.copy()
    framed[:, :20] = (0, 255, 0)  # only the border changes
    np.testing.assert_array_equal(color_histogram_embedding(framed), h)
    half = crops.copy()
    half[:, 20:25, 20:30] = (0, 0, 255)  # half the centre becomes blue
    g = color_histogram_embedding(half)
    assert g[7 * 64] == pytest.approx(np.sqrt(0.5)) and g[7] == pytest.approx(np.sqrt(0.5))
    with pytest.raises(InvalidInputError, match="uint8"):
        color_histogram_embedding(crops.astype(np.float32))
    with pytest.raises(InvalidInputError, match=r"\(S, H, W, 3\)"):
        color_histogram_embedding(crops[0])


# --------------------------------------------------------------------------- outputs


def test_json_dicts_and_curve_images(tmp_path: Path) -> None:
    emb, ids = _random_set(4, n_ids=5)
    retrieval = retrieval_metrics(emb, ids)
    assert isinstance(retrieval, RetrievalResult)
    as_json = json.loads(json.dumps(retrieval.to_json_dict()))
    assert as_json["map"] == retrieval.map and as_json["hit_rate"]["5"] == retrieval.hit_rate[5]
    assert as_json["n_queries"] + as_json["n_excluded_queries"] == len(ids)

    reid = reid_metrics(emb, ids)
    summary = json.loads(json.dumps(reid.to_json_dict()))
    assert set(summary) == {"auroc", "aupr", "n_pairs", "n_positive_pairs"}
    curves = json.loads(json.dumps(reid.to_json_dict(include_curves=True)))
    assert curves["roc"]["fpr"][-1] == 1.0 and curves["pr"]["recall"][-1] == 0.0

    paths = save_curves_png(reid, tmp_path / "sub" / "model", title="model")
    assert [p.name for p in paths] == ["model_roc.png", "model_pr.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


@pytest.mark.parametrize(
    "module", ["model.scoring.evaluation", "model.scoring.metrics", "training.plots"]
)
def test_module_imports_without_torch_sklearn_or_matplotlib(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
