"""The pooled cosine curve (format /1, what older models carry and ``bench counting``
fits), how a model reads it (the within context, legacy, every answer uncertain), and the
metadata round trip of the calibration by context through an ONNX model."""

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
    fit_reid_calibration,
    log_loss,
)
from polypindex.model.scoring.cosine_curve import CosineCalibration, fit_isotonic
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.pairs import PairEvidence, PairSet
from polypindex.model.scoring.reid import decide, reid_score


def _pairs(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of a constructed case: 15 % same-polyp pairs around 0.6, the others around 0.1."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.15
    cos = np.where(same, rng.normal(0.6, 0.12, n), rng.normal(0.1, 0.15, n))
    return np.clip(cos, -1, 1), same


@pytest.mark.parametrize("method", [None, "platt", "isotonic"])
def test_the_pooled_curve_lowers_ece_and_log_loss_on_held_out_pairs(method: str | None) -> None:
    fit_x, fit_y = _pairs(seed=0)
    test_x, test_y = _pairs(seed=1)
    cal = fit_calibration(fit_x, fit_y, method)
    before = expected_calibration_error(reid_score(test_x), test_y.astype(int))
    after = expected_calibration_error(cal.probability(test_x), test_y.astype(int))
    assert after < 0.05 < 0.3 < before
    assert log_loss(cal.probability(test_x), test_y) < log_loss(reid_score(test_x), test_y)
    assert cal.method == (method or cal.method) and cal.method in ("platt", "isotonic")
    assert cal.probability(0.9) > 0.9 and cal.probability(-0.5) < 0.05
    cv = cal.metrics["cv_log_loss"]
    if method is None:
        assert cal.method == min(cv, key=lambda m: (cv[m], m != "platt"))


def test_isotonic_is_monotone_and_pools_violators() -> None:
    x, y = fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert x == pytest.approx([0.1, 0.25, 0.4]) and y == pytest.approx([0.0, 0.5, 1.0])
    cal = fit_calibration(*_pairs(), method="isotonic")
    assert np.all(np.diff(cal.probability(np.linspace(-1, 1, 201))) >= 0)


def test_pooled_curve_bad_input_and_pairs() -> None:
    with pytest.raises(InvalidInputError, match="same-polyp and different-polyp"):
        fit_calibration(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(InvalidInputError):
        fit_calibration(np.array([0.1, np.nan]), np.array([True, False]))
    cos, same = calibration_pairs(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), ["a", "a", "b"])
    np.testing.assert_allclose(cos, [1.0, 0.0, 0.0])
    assert same.tolist() == [True, False, False]


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_legacy_calibration_reads_as_the_within_context_with_a_warning(method: str) -> None:
    old = fit_calibration(*_pairs(), method=method)
    cal = Calibration.from_json(old.to_json())  # what an older model's metadata holds
    assert cal.legacy and cal.warnings and "legacy" in cal.warnings[0]
    within = cal.context("within")
    assert within is not None and within.legacy and cal.context("cross") is None
    grid = np.linspace(-1, 1, 50)
    np.testing.assert_allclose(within.probability(grid[:, None]), old.probability(grid))
    assert within.n_pairs["fit"] == 4000
    # no held-out operating point: every answer uncertain, even far above the old threshold
    high = decide(PairEvidence(0.95, same_procedure=True), cal)
    assert high.answer == "uncertain" and high.probability == pytest.approx(
        float(old.probability(0.95))
    )
    assert high.reason is not None and "legacy" in high.reason
    cross = decide(PairEvidence(0.95, same_procedure=False), cal)
    assert cross.answer == "uncertain" and cross.probability is None
    health = cal.health()
    assert health["legacy"] is True and health["contexts"]["within"]["answers"] == []
    assert cal.to_dict() == old.to_dict()  # written back as it was (export of an old checkpoint)


def test_bad_calibration_json_is_refused() -> None:
    for text in ('{"format": "other"}', "not json", '{"format": "polypindex-reid-calibration/2"}'):
        with pytest.raises(InvalidInputError):
            Calibration.from_json(text)
    with pytest.raises(InvalidInputError):
        CosineCalibration("platt", {"a": 1.0}, 0.5)


def _context_calibration() -> Calibration:
    rng = np.random.default_rng(3)
    n = 800
    same = rng.random(n) < 0.4
    cos = np.clip(np.where(same, rng.normal(0.8, 0.1, n), rng.normal(0.3, 0.15, n)), -1, 1)
    features = np.column_stack([cos, rng.random(n), np.zeros(n), rng.random(n)])
    within = np.arange(n) < 600
    pairs = PairSet(features, same & within, within, (np.arange(n) % 2).astype(np.int8), ((), ()))
    return fit_reid_calibration(pairs)


def _model(path: Path, extra: dict[str, str] | None = None) -> Path:
    meta = onnx_metadata(
        "cal-v1", PreprocessConfig(im_size=8), FragmentConfig(fragment_length=-1), 4, "0.6"
    )
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    return write_mean_colour_encoder(
        path, weight, np.zeros(4, np.float32), {**meta, **(extra or {})}, im_size=8
    )


def test_metadata_round_trip_through_the_onnx_model(tmp_path: Path) -> None:
    from polypindex.model.runtime.onnx import OnnxEncoder as load_encoder

    cal = _context_calibration()
    meta = calibration_metadata({CALIBRATION_KEY: cal.to_dict()})
    assert list(meta) == [META_PREFIX + CALIBRATION_KEY]
    encoder = load_encoder(_model(tmp_path / "m.onnx", meta))
    loaded = encoder.reid_calibration
    assert loaded is not None and not loaded.legacy and loaded.to_dict() == cal.to_dict()
    evidence = PairEvidence(0.7, same_procedure=True, gap=10.0, overlap=0.0, size_ratio=0.1)
    assert decide(evidence, loaded) == decide(evidence, cal)
    old = calibration_metadata({CALIBRATION_KEY: fit_calibration(*_pairs()).to_dict()})
    legacy = load_encoder(_model(tmp_path / "old.onnx", old)).reid_calibration
    assert legacy is not None and legacy.legacy
    assert load_encoder(_model(tmp_path / "none.onnx")).reid_calibration is None
    assert calibration_metadata({}) == {}
    with pytest.raises(ModelLoadError, match=CALIBRATION_KEY):
        calibration_metadata({CALIBRATION_KEY: {"format": "nope"}})
    with pytest.raises(ModelLoadError, match="invalid polypindex metadata"):
        load_encoder(_model(tmp_path / "bad.onnx", {META_PREFIX + CALIBRATION_KEY: "{"}))
