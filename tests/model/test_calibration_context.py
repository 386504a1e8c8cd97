"""Calibration by context on constructed pairs: cross-procedure negatives do not leak
into the within-procedure curve, the self pair is certain, the operating points reach
their target on held-out pairs or every answer abstains, and a context without
same-polyp pairs is not estimable."""

from __future__ import annotations

import numpy as np
import pytest

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.calibration import (
    Calibration,
    calibration_pairs,
    fit_calibration,
    fit_reid_calibration,
)
from polypindex.model.scoring.contexts import choose_rule, fit_logistic, wilson_interval
from polypindex.model.scoring.pairs import (
    PairEvidence,
    PairSet,
    TrackletFacts,
    pair_evidence,
    pair_set,
)
from polypindex.model.scoring.reid import decide


def _within(
    n: int, rng: np.random.Generator, informative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Within-procedure pairs: 40 % same polyp; same-polyp pairs are closer in time and
    (when informative) in cosine."""
    same = rng.random(n) < 0.4
    if informative:
        cos = np.where(same, rng.normal(0.85, 0.06, n), rng.normal(0.55, 0.12, n))
    else:
        cos = rng.normal(0.7, 0.1, n)
    gap = (
        np.where(same, rng.exponential(1.0, n), rng.exponential(2.5, n))
        if informative
        else rng.exponential(2.0, n)
    )
    features = np.column_stack([np.clip(cos, -1, 1), gap, np.zeros(n), rng.random(n)])
    return features, same


def _cross(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs across procedures: never the same polyp, cosines like the within ones
    (the encoder does not tell procedures apart), no time features."""
    features = np.full((n, 4), np.nan)
    features[:, 0] = np.clip(rng.normal(0.65, 0.15, n), -1, 1)
    return features, np.zeros(n, dtype=bool)


def _pair_set(
    within: tuple[np.ndarray, np.ndarray], cross: tuple[np.ndarray, np.ndarray]
) -> PairSet:
    (xw, yw), (xc, yc) = within, cross
    half = np.r_[np.arange(yw.size) % 2, np.arange(yc.size) % 2].astype(np.int8)
    return PairSet(
        np.vstack([xw, xc]),
        np.r_[yw, yc],
        np.r_[np.ones(yw.size, bool), np.zeros(yc.size, bool)],
        half,
        (("p0",), ("p1",)),
    )


def test_cross_procedure_negatives_do_not_leak_into_the_within_curve() -> None:
    rng = np.random.default_rng(0)
    within = _within(1200, rng)
    few = fit_reid_calibration(_pair_set(within, _cross(50, rng)))
    many = fit_reid_calibration(_pair_set(within, _cross(20_000, rng)))
    assert few.contexts["within"].to_dict() == many.contexts["within"].to_dict()
    # held out (the operating half), the within curve is calibrated: its mean
    # probability is the within base rate, while one pooled curve is far below it
    held_out = within[0][1::2], within[1][1::2]
    p = many.contexts["within"].probability(held_out[0])
    assert abs(p.mean() - held_out[1].mean()) < 0.05
    assert many.contexts["within"].metrics["operating"]["ece"] < 0.06
    pooled_x = np.r_[within[0][::2, 0], _cross(20_000, rng)[0][:, 0]]
    pooled_y = np.r_[within[1][::2], np.zeros(20_000, bool)]
    pooled = fit_calibration(pooled_x, pooled_y, method="platt")
    assert pooled.probability(held_out[0][:, 0]).mean() < held_out[1].mean() - 0.1
    # the cross context has no same-polyp pair: not estimable, the prior 0, uncertain
    cross = many.contexts["cross"]
    assert not cross.estimable and cross.prior == 0.0 and cross.curve is None
    assert cross.n_pairs == {"fit": 10_000, "operating": 10_000} and cross.n_positive["fit"] == 0
    d = decide(PairEvidence(0.99, same_procedure=False), many)
    assert d.answer == "uncertain" and d.probability == 0.0 and not d.estimable
    assert d.reason is not None and "not estimable" in d.reason


def test_same_answers_reach_the_target_precision_held_out() -> None:
    rng = np.random.default_rng(1)
    cal = fit_reid_calibration(_pair_set(_within(1200, rng), _cross(500, rng)))
    within = cal.contexts["within"]
    same, different = within.same, within.different
    assert same.threshold is not None and same.threshold >= 0.9
    assert same.value is not None and same.value >= 0.9 and same.n >= 10
    assert same.interval is not None and same.interval[0] < same.value <= same.interval[1]
    assert different.threshold is not None and different.threshold <= 0.1
    assert different.value is not None and different.value >= 0.9
    # on fresh pairs of the same kind the answers keep their promise
    x, y = _within(4000, np.random.default_rng(2))
    p = within.probability(x)
    answers = np.asarray([within.answer(float(v)) for v in p])
    assert y[answers == "same"].mean() >= 0.9 and (~y[answers == "different"]).mean() >= 0.9
    assert 0 < (answers == "uncertain").mean() < 1


def test_every_answer_abstains_when_no_operating_point_reaches_the_target() -> None:
    rng = np.random.default_rng(4)
    cal = fit_reid_calibration(_pair_set(_within(800, rng, informative=False), _cross(200, rng)))
    within = cal.contexts["within"]
    assert within.estimable and within.same.threshold is None and within.different.threshold is None
    assert within.same.reason is not None and "precision of 0.9" in within.same.reason
    for cosine in (-0.5, 0.3, 0.9, 0.999):
        d = decide(
            PairEvidence(cosine, same_procedure=True, gap=1.0, overlap=0.0, size_ratio=0.1), cal
        )
        assert d.answer == "uncertain" and d.reason and "never answered" in d.reason
    health = Calibration.from_json(cal.to_json()).health()["contexts"]["within"]
    assert health["answers"] == [] and len(health["reasons"]) == 2


def test_the_self_pair_is_certain_in_every_context() -> None:
    rng = np.random.default_rng(5)
    cal = fit_reid_calibration(_pair_set(_within(400, rng, informative=False), _cross(100, rng)))
    e = rng.standard_normal(8).astype(np.float32)
    e /= np.linalg.norm(e)
    facts = TrackletFacts(procedure="p", tracklet_id=7, frame_ids=np.arange(10), box=(0, 0, 5, 5))
    for calibration in (cal, None):
        d = decide(pair_evidence(float(e @ e), facts, facts), calibration)
        assert (d.answer, d.probability, d.reason) == ("same", 1.0, "the same tracklet")
    other = TrackletFacts(procedure="q", tracklet_id=8)
    twin = decide(pair_evidence(1.0, facts, other), cal)  # identical embeddings, cross
    assert twin.answer == "same" and twin.probability == 1.0 and twin.context == "cross"


def test_the_cosine_never_lowers_the_probability() -> None:
    rng = np.random.default_rng(6)
    x = rng.random((300, 2))
    y = rng.random(300) < 1 - x[:, 0]  # same polyp *less* likely at higher cosine
    params = fit_logistic(x, y, monotone=[0])
    assert params["coef"][0] == 0.0 and params["coef"][1] != 0.0
    y2 = rng.random(300) < x[:, 0]
    assert fit_logistic(x, y2, monotone=[0])["coef"][0] > 0


def test_wilson_interval_and_the_rule_of_a_small_sample() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    p = np.array([0.95] * 9 + [0.2] * 30)
    y = np.array([True] * 9 + [False] * 30)
    assert choose_rule("same", p, y, 0.9, min_support=10).threshold is None  # 9 answers only
    rule = choose_rule("same", p, y, 0.9, min_support=5)
    assert rule.threshold == 0.95 and rule.value == 1.0 and rule.n == 9
    with pytest.raises(InvalidInputError):
        choose_rule("maybe", p, y)


def test_pair_features_from_stored_facts() -> None:
    a = TrackletFacts.of_stored(
        "p", 1, 0, 9, {"frame_ids": list(range(10)), "mean": [0, 0, 10, 10]}
    )
    b = TrackletFacts.of_stored("p", 2, 5, 24, {"mean": [0, 0, 20, 20]})  # no frame ids: the span
    c = TrackletFacts.of_stored("p", 3, 40, 49, None)
    ab = pair_evidence(0.5, a, b)
    assert (ab.context, ab.gap, ab.overlap) == ("within", 0.0, 0.5)
    assert ab.size_ratio == pytest.approx(np.log(4.0))
    ac = pair_evidence(0.5, a, c)
    assert (ac.gap, ac.overlap, ac.size_ratio) == (31.0, 0.0, None)
    assert ac.features() is None and ac.features(("cosine", "log_gap")) is not None
    other = pair_evidence(0.5, a, TrackletFacts.of_stored("q", 4, 0, 9, None))
    assert other.context == "cross" and other.gap is None
    assert pair_evidence(0.5, a, TrackletFacts()).context == "unknown"


def test_pair_set_splits_by_procedure_and_matches_the_pairs() -> None:
    rng = np.random.default_rng(7)
    e = rng.standard_normal((12, 6))
    ids = [f"{i // 3}" for i in range(12)]
    facts = [
        TrackletFacts(
            procedure=f"v{i // 6 + 2 * (i % 2)}",
            frame_ids=np.arange(i * 10, i * 10 + 5),
            box=(0, 0, 5 + i, 5),
        )
        for i in range(12)
    ]
    ps = pair_set(e, ids, facts)
    cos, same = calibration_pairs(e, ids)
    np.testing.assert_allclose(ps.features[:, 0], cos)
    assert ps.same.tolist() == same.tolist()
    fit, operating = ps.procedures
    assert set(fit) | set(operating) == {"v0", "v1", "v2", "v3"} and not set(fit) & set(operating)
    assert np.all(np.isnan(ps.features[~ps.within, 1])) and not np.any(
        np.isnan(ps.features[ps.within])
    )
    assert {int(h) for h in ps.half} <= {-1, 0, 1}
    with pytest.raises(InvalidInputError, match="procedure"):
        pair_set(e, ids, [TrackletFacts()] * 12)
