"""The bag-temperature schedule of the temporal temperature sampler
(docs/method.md#temporal-bags): the cosine from ``t_min`` to ``t_max`` over the epochs and the
rank distribution it sets. Re-exported by :mod:`training.samplers`."""

from __future__ import annotations

import math

import numpy as np

from polypindex.model.core.errors import ConfigError

__all__ = ["T_SCHEDULES", "cosine_temperature", "rank_probabilities"]

T_SCHEDULES = ("last_epoch", "reference")
"""``TrainConfig.t_schedule`` (docs/method.md#temporal-bags): progress ``e / (E - 1)`` (``t_max``
at the last epoch) or the reference implementation's ``e / E`` (never reaching ``t_max``)."""


def cosine_temperature(
    epoch: int, max_epochs: int, t_min: float, t_max: float, schedule: str = "last_epoch"
) -> float:
    """Cosine schedule from ``t_min`` at epoch 0 to ``t_max`` at epoch ``max_epochs - 1``
    (with ``schedule="reference"``: at epoch ``max_epochs``, after the run)."""
    if schedule not in T_SCHEDULES:
        raise ConfigError(f"t_schedule must be one of {list(T_SCHEDULES)}, got {schedule!r}")
    span = max_epochs if schedule == "reference" else max_epochs - 1
    if span <= 0:
        return float(t_min)
    progress = min(max(epoch, 0), span) / span
    return float(t_min + (t_max - t_min) * 0.5 * (1.0 - math.cos(math.pi * progress)))


def rank_probabilities(n_ranks: int, temperature: float) -> np.ndarray:
    """p(rank r) ∝ exp(−r / T) over ranks 1..n_ranks, as an (n_ranks,) array."""
    ranks = np.arange(1, n_ranks + 1, dtype=np.float64)
    logits = -ranks / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()
