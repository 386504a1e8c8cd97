"""Probe metrics equal scikit-learn / torchmetrics; temperature scaling finds the NLL minimum."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.metrics import (
    binary_classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from polypindex.training.probe_head import binary_nll, fit_temperature


def _sklearn(y: np.ndarray, p: np.ndarray, s: np.ndarray | None) -> dict[str, float]:
    out = {
        "accuracy": accuracy_score(y, p),
        "macro_f1": f1_score(y, p, average="macro", labels=[0, 1], zero_division=0),
        "sensitivity": recall_score(y, p, zero_division=0),
        "specificity": recall_score(y, p, pos_label=0, zero_division=0),
        "ppv": precision_score(y, p, zero_division=0),
        "npv": precision_score(y, p, pos_label=0, zero_division=0),
    }
    if s is not None and len(set(y.tolist())) == 2:
        out["auroc"] = roc_auc_score(y, s)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [7, 40])
def test_binary_metrics_equal_sklearn(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # ties on purpose
    pred = (rng.random(n) < 0.5).astype(int)
    ours = binary_classification_metrics(y, pred, scores)
    for key, value in _sklearn(y, pred, scores).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["tp"] + ours["fp"] + ours["tn"] + ours["fn"] == n


@pytest.mark.parametrize(
    ("y", "pred", "undefined"),
    [
        ([1, 1, 1], [1, 1, 0], {"specificity", "auroc"}),  # no negatives
        ([0, 0, 1], [1, 1, 1], {"npv"}),  # no negative predictions
        ([0, 1, 1], [0, 0, 0], {"ppv"}),  # no positive predictions
        ([0, 0, 0], [0, 0, 0], {"sensitivity", "ppv", "auroc"}),
    ],
)
def test_undefined_rates_are_none_with_a_reason(
    y: list[int], pred: list[int], undefined: set[str]
) -> None:
    ours = binary_classification_metrics(np.asarray(y), np.asarray(pred), np.linspace(0, 1, 3))
    assert set(ours["undefined"]) == undefined
    for key in undefined:
        assert ours[key] is None
        assert ours["undefined"][key].startswith("undefined")
    expected = _sklearn(np.asarray(y), np.asarray(pred), None)
    # macro F1 over both classes, a class neither present nor predicted scoring 0 (sklearn's zero_division=0)
    assert ours["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert ours["accuracy"] == pytest.approx(expected["accuracy"])


def test_binary_metrics_reject_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="binary"):
        binary_classification_metrics(np.asarray([0, 2]), np.asarray([0, 1]))
    with pytest.raises(InvalidInputError, match="length"):
        binary_classification_metrics(np.asarray([0, 1]), np.asarray([0]))
    with pytest.raises(InvalidInputError, match="at least one"):
        binary_classification_metrics(np.zeros(0), np.zeros(0))


def _naive_ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = [
            (pi, yi)
            for pi, yi in zip(p, y, strict=True)
            if lo <= pi < hi or (k == bins - 1 and pi == 1.0)
        ]
        if inside:
            conf = sum(pi for pi, _ in inside) / len(inside)
            freq = sum(yi for _, yi in inside) / len(inside)
            total += len(inside) / len(p) * abs(freq - conf)
    return total


@pytest.mark.parametrize("seed", range(5))
def test_ece_equals_naive_and_torchmetrics(seed: int) -> None:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(seed)
    p = rng.random(300) * 0.999  # torchmetrics puts p == 1 in a bin of its own: avoid it
    y = (rng.random(300) < p**1.5).astype(int)
    ours = expected_calibration_error(p, y)
    assert ours == pytest.approx(_naive_ece(p, y), abs=1e-12)
    ref = tm.binary_calibration_error(
        torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(y), n_bins=15, norm="l1"
    )
    assert ours == pytest.approx(float(ref), abs=1e-9)


def test_ece_closed_form_and_bins() -> None:
    # all at p = 0.8 with 3 of 4 positive: ECE = |0.75 - 0.8| = 0.05
    assert expected_calibration_error(np.full(4, 0.8), np.asarray([1, 1, 1, 0])) == pytest.approx(
        0.05
    )
    bins = reliability_bins(np.asarray([0.0, 1.0, 0.5]), np.asarray([0, 1, 1]))
    assert bins["count"].sum() == 3 and bins["count"][0] == 1 and bins["count"][-1] == 1
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        expected_calibration_error(np.asarray([1.2]), np.asarray([1]))


def test_fit_temperature_is_the_nll_minimum() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-logits / 2.5))).astype(int)  # true T = 2.5
    t = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    nll = [binary_nll(logits, labels, g) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=1e-3)
    assert binary_nll(logits, labels, t) <= min(nll) + 1e-12
    assert 1.8 < t < 3.5  # near the generating temperature
    # calibration lowers the ECE of these over-confident logits
    p1 = 1 / (1 + np.exp(-logits))
    pt = 1 / (1 + np.exp(-logits / t))
    assert expected_calibration_error(pt, labels) < expected_calibration_error(p1, labels)


def test_fit_temperature_bounds() -> None:
    # separable and correctly ordered: sharper is always better → the lower bound
    logits = np.asarray([-2.0, -1.0, 1.0, 2.0])
    assert fit_temperature(logits, np.asarray([0, 0, 1, 1])) == pytest.approx(0.05)
    # anti-correlated logits: flattening is always better → the upper bound
    assert fit_temperature(logits, np.asarray([1, 1, 0, 0])) == pytest.approx(20.0)
    with pytest.raises(InvalidInputError):
        fit_temperature(np.zeros(0), np.zeros(0))


def test_binary_nll_closed_form() -> None:
    assert binary_nll(np.zeros(3), np.asarray([0, 1, 1]), 1.0) == pytest.approx(np.log(2))
    z = np.asarray([2.0])
    assert binary_nll(z, np.asarray([1]), 2.0) == pytest.approx(-np.log(1 / (1 + np.exp(-1.0))))
