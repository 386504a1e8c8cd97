"""The distance-aware soft multi-positive loss: naive reference, closed forms, module wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.nets.hmve import EncoderConfig
from polypindex.training.losses import (
    LossSettings,
    multi_positive_contrastive,
    soft_multi_positive_contrastive,
    temporal_soft_targets,
)
from polypindex.training.module import HmveModule
from polypindex.training.samplers import FragmentIndex


def _naive(
    z: np.ndarray,
    labels: list[int],
    times: list[float],
    sigma: float,
    tau: float,
    groups: list[int] | None = None,
) -> float:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(labels)
    losses = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)

        def dt(j: int, i: int = i) -> float:
            if groups is not None and groups[i] != groups[j]:
                return 1.0
            return abs(times[i] - times[j])

        raw = {j: math.exp(-dt(j) / sigma) for j in pos}
        total = sum(raw.values())
        losses.append(
            -sum(raw[j] / total * math.log(math.exp(float(z[i] @ z[j]) / tau) / denom) for j in pos)
        )
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_groups", [False, True])
def test_matches_a_naive_loop(seed: int, with_groups: bool) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(9, 5))
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]  # label 3: an anchor without positives
    times = rng.random(9).tolist()
    groups = [0, 0, 1, 1, 1, 0, 0, 1, 1] if with_groups else None
    got = soft_multi_positive_contrastive(
        torch.tensor(z),
        torch.tensor(labels),
        torch.tensor(times),
        sigma=0.2,
        temperature=0.5,
        groups=None if groups is None else torch.tensor(groups),
    )
    assert float(got) == pytest.approx(_naive(z, labels, times, 0.2, 0.5, groups), rel=1e-5)


def test_closed_form_three_items() -> None:
    # orthogonal unit vectors: every cosine 0, so softmax over the 2 others is 1/2 each;
    # with one label, loss_i = -sum_j w_ij log(1/2) = log 2 whatever the weights
    z = torch.eye(3)
    loss = soft_multi_positive_contrastive(z, torch.zeros(3, dtype=torch.long), torch.rand(3), 0.1)
    assert float(loss) == pytest.approx(math.log(2))
    # anchor 0 with positives at Δt 0.1 and 0.3, σ = 0.1: weights e^-1 / (e^-1 + e^-3), ...
    w = temporal_soft_targets(
        torch.tensor([[False, True, True], [True, False, True], [True, True, False]]),
        torch.tensor([0.0, 0.1, 0.3]),
        sigma=0.1,
    )
    a, b = math.exp(-1), math.exp(-3)
    assert w[0].tolist() == pytest.approx([0.0, a / (a + b), b / (a + b)])
    assert w.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_large_sigma_is_the_uniform_loss_and_small_sigma_the_nearest() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 6)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    times = torch.rand(8)
    uniform = multi_positive_contrastive(z, labels, 0.1)
    soft = soft_multi_positive_contrastive(z, labels, times, sigma=1e6, temperature=0.1)
    assert float(soft) == pytest.approx(float(uniform), rel=1e-5)
    # σ → 0: all the weight on the nearest positive in time
    positive = (labels[:, None] == labels[None, :]) & ~torch.eye(8, dtype=torch.bool)
    w = temporal_soft_targets(positive, times, 1e-4)
    dt = (times[:, None] - times[None, :]).abs().masked_fill(~positive, 9.0)
    assert torch.equal(w.argmax(dim=1), dt.argmin(dim=1))


def test_gradient_and_errors() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    loss = soft_multi_positive_contrastive(z, torch.tensor([0, 0, 1, 1]), torch.rand(4))
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        soft_multi_positive_contrastive(z, torch.tensor([0, 0, 1, 1]), torch.rand(4), sigma=0)
    with pytest.raises(InvalidInputError, match="times must be"):
        soft_multi_positive_contrastive(z, torch.tensor([0, 0, 1, 1]), torch.rand(3))


def test_module_uses_fragment_times() -> None:
    config = EncoderConfig(
        backbone="tiny", tiny_width=8, d_model=32, n_layers=1, n_heads=4, dim_feedforward=32
    )
    params = LossSettings(soft_sigma=0.1)
    module = HmveModule(config, loss="soft_multi_positive", d_proj=16, loss_params=params)
    frames = torch.randn(4, 2, 3, 32, 32)
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.tensor([3, 1, 0, 2])
    with pytest.raises(ConfigError, match="set_fragment_times"):
        module.compute_loss(frames, labels, ids)
    index = FragmentIndex(
        video=np.array(["a", "a", "b", "b"], dtype=object),
        position=np.array([0.0, 0.2, 0.5, 0.9]),
        tracklet=np.arange(4),
    )
    module.set_fragment_times(train=index)
    module.eval()
    with torch.no_grad():
        loss, terms = module.compute_loss(frames, labels, ids)
        expected = soft_multi_positive_contrastive(
            module(frames)[:, 0],
            labels,
            torch.tensor([0.9, 0.2, 0.0, 0.5]),
            0.1,
            module.loss_params.temperature,
            groups=torch.tensor([1, 0, 0, 1]),
        )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(terms) == {"soft_multi_positive"}
