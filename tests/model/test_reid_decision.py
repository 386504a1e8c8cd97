"""The printed decision: a probability and a threshold never print as "0.13 < 0.13";
labels agree with the answers; a model without a calibration never decides."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.contexts import ContextFit, Curve, Rule
from polypindex.model.scoring.pairs import PairEvidence
from polypindex.model.scoring.reid import Decision, decide, format_pair, format_probability

unit = st.floats(0.0, 1.0, allow_nan=False)


@given(unit, unit, st.integers(1, 4))
def test_printed_numbers_compare_as_the_numbers(p: float, t: float, digits: int) -> None:
    a, b = format_pair(p, t, digits)
    assert len(a.split(".")[1]) >= digits and len(a) == len(b)
    if p >= t:
        assert float(a) >= float(b)
    else:
        assert float(a) < float(b)  # never "0.13 < 0.13"
    if p != t and abs(p - t) > 1e-11:
        assert a != b


def test_the_case_of_the_issue() -> None:
    assert format_pair(0.1299, 0.13) == ("0.1299", "0.1300")
    assert format_pair(0.1349, 0.13) == ("0.135", "0.130")
    assert format_pair(0.13, 0.13) == ("0.13", "0.13")
    assert format_pair(0.5, 0.9) == ("0.50", "0.90")
    assert format_probability(None) == "n/a" and format_probability(0.126) == "0.13"


def _calibration(same_at: float, different_at: float) -> Calibration:
    curve = Curve(
        "logistic", ("cosine",), {"mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}
    )
    within = ContextFit(
        "within",
        True,
        0.4,
        curve,
        Rule("same", threshold=same_at, value=0.95, interval=(0.8, 0.99), n=40, correct=38),
        Rule(
            "different", threshold=different_at, value=0.97, interval=(0.9, 0.99), n=60, correct=58
        ),
    )
    return Calibration({"within": within})


@pytest.mark.parametrize("cosine", np.linspace(-0.2, 0.99, 120).tolist())
def test_labels_agree_with_the_answers(cosine: float) -> None:
    p_at = 1 / (1 + np.exp(-(10 * 0.6875 - 5)))  # the probability at cosine 0.6875
    cal = _calibration(same_at=float(p_at), different_at=0.05)
    d = decide(PairEvidence(cosine, same_procedure=True), cal)
    shown = [float(v) for v in re.findall(r"\d\.\d+", d.label)]
    if d.answer == "same":
        assert d.label.startswith("same polyp") and shown[0] >= shown[1]
        assert d.probability is not None and d.probability >= p_at
    elif d.answer == "different":
        assert d.label.startswith("different polyp") and shown[0] <= shown[1] == 0.05
    else:
        assert d.label.startswith("uncertain") and shown[0] < shown[1]  # below the same point
        assert d.reason is not None
    assert d.to_dict()["label"] == d.label and d.to_dict()["same_polyp"] == (d.answer == "same")


def test_just_below_the_same_point_prints_below_it() -> None:
    cal = _calibration(same_at=0.13, different_at=0.01)
    # the cosine whose probability is a hair under 0.13
    cosine = (np.log(0.12996 / (1 - 0.12996)) + 5) / 10
    d = decide(PairEvidence(float(cosine), same_procedure=True), cal)
    assert d.answer == "uncertain" and d.label == "uncertain · p=0.12996 (same needs ≥ 0.13000)"


def test_without_a_calibration_or_context_nothing_is_decided() -> None:
    d = decide(PairEvidence(0.95, same_procedure=True), None)
    assert d == Decision("uncertain", None, 0.95, "within", d.reason) and d.reason
    assert "no calibration" in d.reason and d.label == "uncertain · no calibrated probability"
    unknown = decide(PairEvidence(0.95), _calibration(0.9, 0.1))
    assert unknown.answer == "uncertain" and unknown.probability is None
    assert unknown.context == "unknown" and unknown.calibrated
    clipped = decide(PairEvidence(1.5, same_procedure=True), None)
    assert clipped.similarity == 1.0 and clipped.answer == "same"  # identical embeddings
