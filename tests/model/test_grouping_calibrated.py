"""Grouping on a model calibrated by context: the within-procedure probabilities read the
time gap and the boxes, and the default merge cut is the within context's ``same``
operating point (no merging where the model cannot say ``same``)."""

from __future__ import annotations

import numpy as np
import pytest

from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.contexts import ContextFit, Curve, Rule
from polypindex.model.scoring.cosine_curve import CosineCalibration
from polypindex.model.scoring.grouping import (
    DEFAULT_CUT,
    TrackletSpan,
    calibrated_cut,
    group,
    within_probabilities,
)
from polypindex.model.scoring.pairs import FEATURES


def _calibration(same_at: float | None) -> Calibration:
    """Same polyp when close in cosine and in time: coef +cosine, −log gap."""
    params = {
        "mean": [0.0] * 4,
        "scale": [1.0] * 4,
        "coef": [8.0, -1.5, -3.0, -2.0],
        "intercept": 0.0,
    }
    same = (
        Rule("same", threshold=same_at, value=0.95, n=30, correct=29)
        if same_at
        else Rule("same", reason="none reaches 0.9")
    )
    within = ContextFit(
        "within",
        True,
        0.4,
        Curve("logistic", FEATURES, params),
        same,
        Rule("different", reason="x"),
    )
    return Calibration({"within": within})


def _span(tid: int, start: int, n: int, size: float = 30.0) -> TrackletSpan:
    return TrackletSpan(tid, np.arange(start, start + n), np.asarray([10.0, 10.0, size, size]))


def test_the_default_cut_is_the_same_operating_point() -> None:
    assert calibrated_cut(_calibration(0.93)) == 0.93
    assert calibrated_cut(_calibration(None)) == 1.0  # no `same`: nothing merges
    legacy = Calibration.from_cosine(CosineCalibration("platt", {"a": 5.0, "b": -3.0}, 0.4))
    assert calibrated_cut(legacy) == DEFAULT_CUT


def test_time_and_boxes_enter_the_within_probabilities() -> None:
    v = np.asarray([1.0, 0.0, 0.0])
    w, w2 = v * 0.999 + [0, 0.0447, 0], v * 0.999 + [0, 0, 0.0447]
    emb = np.stack([v, w, w2, w])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    spans = [_span(1, 0, 20), _span(2, 25, 20), _span(3, 2000, 20), _span(4, 30, 20, size=90.0)]
    p = within_probabilities(emb, spans, _calibration(0.9))
    assert p.shape == (4, 4) and np.allclose(p, p.T) and np.all(np.diag(p) == 1.0)
    assert p[0, 1] > 0.9 > p[0, 2]  # the same cosine, far apart in time: lower
    assert p[0, 1] > p[0, 3]  # the same cosine, another box size: lower
    assert p[1, 3] == 1.0 > p[1, 2]  # identical embeddings (but they overlap: cannot-link)
    labels = group(spans, p, "average", calibrated_cut(_calibration(0.9)))
    assert labels[0] == labels[1] and labels[0] != labels[2]
    none = group(spans, p, "average", calibrated_cut(_calibration(None)))
    assert len(set(none.tolist())) == 4  # at cut 1.0 only identical embeddings may merge


@pytest.mark.parametrize("method", ["average", "complete", "components"])
def test_every_method_runs_on_calibrated_probabilities(method: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    spans = [_span(i, 40 * i, 30) for i in range(6)]
    p = within_probabilities(emb, spans, _calibration(0.9))
    labels = group(spans, p, method, 0.9)
    assert labels.shape == (6,)
