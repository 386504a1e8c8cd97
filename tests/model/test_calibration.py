"""Calibrated same-polyp probability: fitting lowers ECE, the metadata round trip, the
decision rule with and without a calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder

from polypindex.model.core.errors import InvalidInputError, ModelLoadError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.nets.export import META_PREFIX, calibration_metadata
from polypindex.model.scoring.calibration import (
    CALIBRATION_KEY,
    Calibration,
    calibration_pairs,
    fit_calibration,
    fit_isotonic,
    log_loss,
)
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.reid import decide, reid_score


def _pairs(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of a constructed case: 15 % same-polyp pairs around 0.6, the others around 0.1."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.15
    cos = np.where(same, rng.normal(0.6, 0.12, n), rng.normal(0.1, 0.15, n))
    return np.clip(cos, -1, 1), same


@pytest.mark.parametrize("method", [None, "platt", "isotonic"])
def test_calibration_lowers_ece_and_log_loss_on_held_out_pairs(method: str | None) -> None:
    fit_x, fit_y = _pairs(seed=0)
    test_x, test_y = _pairs(seed=1)
    cal = fit_calibration(fit_x, fit_y, method)
    before = expected_calibration_error(reid_score(test_x), test_y.astype(int))
    after = expected_calibration_error(cal.probability(test_x), test_y.astype(int))
    assert before > 0.3  # sigmoid(cosine) of these pairs is far from calibrated
    assert after < 0.05 < before
    assert log_loss(cal.probability(test_x), test_y) < log_loss(reid_score(test_x), test_y)
    assert cal.metrics["ece_after"] < cal.metrics["ece_before"]
    assert cal.method == (method or cal.method) and cal.method in ("platt", "isotonic")
    # calibrated probabilities reach well beyond sigmoid(1) = 0.731
    assert cal.probability(0.9) > 0.9 and cal.probability(-0.5) < 0.05


def test_the_default_choice_is_the_lower_cross_validated_log_loss() -> None:
    cal = fit_calibration(*_pairs())
    cv = cal.metrics["cv_log_loss"]
    assert cal.method == min(cv, key=lambda m: (cv[m], m != "platt"))


def test_isotonic_is_monotone_and_pools_violators() -> None:
    x, y = fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert x == pytest.approx([0.1, 0.25, 0.4]) and y == pytest.approx([0.0, 0.5, 1.0])
    cal = fit_calibration(*_pairs(), method="isotonic")
    grid = np.linspace(-1, 1, 201)
    assert np.all(np.diff(cal.probability(grid)) >= 0)


def test_threshold_is_the_best_f1_on_the_calibrated_probability() -> None:
    x, y = _pairs()
    cal = fit_calibration(x, y)
    p = cal.probability(x)

    def f1(t: float) -> float:
        pred = p >= t
        tp = np.sum(pred & y)
        return float(2 * tp / (2 * tp + np.sum(pred & ~y) + np.sum(~pred & y)))

    assert f1(cal.threshold) == pytest.approx(cal.metrics["f1"])
    assert all(f1(t) <= cal.metrics["f1"] + 1e-12 for t in np.linspace(0.01, 0.99, 99))


def test_json_round_trip_and_bad_input() -> None:
    for method in ("platt", "isotonic"):
        cal = fit_calibration(*_pairs(), method=method)
        back = Calibration.from_json(cal.to_json())
        grid = np.linspace(-1, 1, 50)
        np.testing.assert_allclose(back.probability(grid), cal.probability(grid))
        assert back.threshold == cal.threshold
    with pytest.raises(InvalidInputError):
        Calibration.from_json('{"format": "other"}')
    with pytest.raises(InvalidInputError):
        Calibration.from_json("not json")
    with pytest.raises(InvalidInputError, match="same-polyp and different-polyp"):
        fit_calibration(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(InvalidInputError):
        fit_calibration(np.array([0.1, np.nan]), np.array([True, False]))


def test_calibration_pairs_are_the_unordered_pairs() -> None:
    e = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    cos, same = calibration_pairs(e, ["a", "a", "b"])
    np.testing.assert_allclose(cos, [1.0, 0.0, 0.0])
    assert same.tolist() == [True, False, False]


def test_decide_with_and_without_calibration() -> None:
    a = np.array([1.0, 0.0])
    b = np.array([0.8, 0.6])  # cosine 0.8
    plain = decide(a, b, 0.65)
    assert not plain.calibrated and plain.probability == pytest.approx(float(reid_score(0.8)))
    assert plain.threshold == 0.65 and plain.same_polyp is True
    cal = Calibration("platt", {"a": 10.0, "b": -7.0}, threshold=0.9)
    decision = decide(a, b, 0.65, cal)
    assert decision.calibrated and decision.threshold == 0.9
    assert decision.probability == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert decision.same_polyp is False


def _model(path: Path, extra: dict[str, str] | None = None) -> Path:
    meta = onnx_metadata(
        "cal-v1", PreprocessConfig(im_size=8), FragmentConfig(fragment_length=-1), 4, "0.6"
    )
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    return write_mean_colour_encoder(
        path, weight, np.zeros(4, np.float32), {**meta, **(extra or {})}, im_size=8
    )


def test_metadata_round_trip_through_the_onnx_model(tmp_path: Path) -> None:
    from polypindex.model.runtime.onnx import OnnxEncoder

    cal = fit_calibration(*_pairs())
    meta = calibration_metadata({CALIBRATION_KEY: cal.to_dict()})
    assert list(meta) == [META_PREFIX + CALIBRATION_KEY]
    path = _model(tmp_path / "m.onnx", meta)
    encoder = OnnxEncoder(path)
    assert encoder.reid_calibration is not None
    assert encoder.reid_calibration.threshold == cal.threshold
    np.testing.assert_allclose(encoder.reid_calibration.probability(0.3), cal.probability(0.3))
    assert OnnxEncoder(_model(tmp_path / "old.onnx")).reid_calibration is None
    assert calibration_metadata({}) == {}
    with pytest.raises(ModelLoadError, match=CALIBRATION_KEY):
        calibration_metadata({CALIBRATION_KEY: {"format": "nope"}})
    bad = _model(tmp_path / "bad.onnx", {META_PREFIX + CALIBRATION_KEY: "{"})
    with pytest.raises(ModelLoadError, match="invalid polypindex metadata"):
        OnnxEncoder(bad)
