"""The bag-temperature schedule option ``t_schedule`` (docs/method.md#temporal-bags): ours
reaches ``t_max`` at the last epoch (progress ``epoch / (max_epochs - 1)``), the reference
implementation's progress is ``epoch / max_epochs`` and never reaches it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError
from polypindex.training.bag_schedule import T_SCHEDULES, cosine_temperature
from polypindex.training.samplers import FragmentIndex, make_sampler
from polypindex.training.train_config import load_train_config


def _reference(epoch: int, max_epochs: int, t_min: float, t_max: float) -> float:
    """The reference's formula, written out: c = epoch / max_epochs, cosine in c."""
    c = epoch / max_epochs
    return t_min + 0.5 * (1.0 - math.cos(math.pi * c)) * (t_max - t_min)


@pytest.mark.parametrize("max_epochs", [2, 4, 50])
def test_the_two_schedules(max_epochs: int) -> None:
    ours = [cosine_temperature(e, max_epochs, 0.3, 12.0) for e in range(max_epochs)]
    ref = [cosine_temperature(e, max_epochs, 0.3, 12.0, "reference") for e in range(max_epochs)]
    assert ours[0] == ref[0] == pytest.approx(0.3)
    assert ours[-1] == pytest.approx(12.0)
    assert ref[-1] < 12.0
    assert ref == pytest.approx([_reference(e, max_epochs, 0.3, 12.0) for e in range(max_epochs)])
    assert all(r <= o + 1e-12 for r, o in zip(ref, ours, strict=True))  # the reference lags


def test_a_one_epoch_run() -> None:
    assert cosine_temperature(0, 1, 0.3, 12.0) == pytest.approx(0.3)
    assert cosine_temperature(0, 1, 0.3, 12.0, "reference") == pytest.approx(0.3)


def test_the_option_reaches_the_sampler_and_is_validated() -> None:
    n = 40
    index = FragmentIndex(
        video=np.asarray(["v"] * n, dtype=object),
        position=np.linspace(0.0, 1.0, n),
        tracklet=np.arange(n) // 5,
        identity=np.asarray([f"p{i // 5}" for i in range(n)], dtype=object),
    )
    args = ("temporal_temperature", index, 5, 10, 4, 0.3, 12.0, 0)
    assert make_sampler(*args).temperature(3) == pytest.approx(12.0)
    ref = make_sampler(*args, t_schedule="reference")
    assert ref.temperature(3) == pytest.approx(_reference(3, 4, 0.3, 12.0))
    assert T_SCHEDULES == ("last_epoch", "reference")
    assert load_train_config("paper", {"t_schedule": "reference"}).t_schedule == "reference"
    assert load_train_config("demo").t_schedule == "last_epoch"
    with pytest.raises(ConfigError, match="t_schedule must be one of"):
        load_train_config("demo", {"t_schedule": "linear"})
    with pytest.raises(ConfigError, match="t_schedule must be one of"):
        make_sampler(*args, t_schedule="linear")
