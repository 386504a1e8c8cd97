"""The loss and sampler registries and the generic preset loader: a new loss or sampler
is one function + one registration, with no other file edited."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.hmve import EncoderConfig
from polypindex.training import samplers
from polypindex.training.losses import LOSSES, LossBatch, LossSettings, register_loss
from polypindex.training.module import HmveModule
from polypindex.training.msn_config import load_msn_config
from polypindex.training.samplers import FragmentIndex, KNearestBagSampler
from polypindex.training.train_config import load_train_config

TINY = EncoderConfig(
    backbone="tiny", tiny_width=8, d_model=32, n_layers=1, n_heads=4, dim_feedforward=32
)


@pytest.fixture
def toy_loss(monkeypatch: pytest.MonkeyPatch) -> str:
    """Registers ``toy``: squared distance of each CLS projection to its bag's mean."""
    monkeypatch.setitem(LOSSES, "toy", LOSSES["mil_nce"])  # removed again after the test

    @register_loss("toy")
    def build(settings: LossSettings) -> object:
        def compute(batch: LossBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            cls = batch.projections[:, 0]
            onehot = torch.nn.functional.one_hot(batch.labels).float()
            means = (onehot.T @ cls) / onehot.sum(0)[:, None]
            loss = ((cls - means[batch.labels]) ** 2).sum(-1).mean() / settings.temperature
            return loss, {"toy": loss.detach()}

        return compute

    return "toy"


def test_a_registered_loss_trains_a_step(toy_loss: str) -> None:
    torch.manual_seed(0)
    module = HmveModule(TINY, loss=toy_loss, d_proj=8)
    optimiser = module.configure_optimizers()
    frames = torch.randn(4, 2, 3, 32, 32)
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    before = [p.detach().clone() for p in module.projector.parameters()]
    loss, terms = module.compute_loss(frames, labels, ids)
    assert set(terms) == {"toy"} and torch.isfinite(loss)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    after = list(module.projector.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert load_train_config("test_tiny", {"loss": toy_loss}).loss == toy_loss


def test_unknown_loss_lists_the_registered_ones(toy_loss: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'nope'.*'mil_nce'.*'toy'"):
        HmveModule(TINY, loss="nope")
    with pytest.raises(ConfigError, match=r"loss must be one of .*'toy'"):
        load_train_config("test_tiny", {"loss": "nope"})


def test_a_registered_sampler_is_built_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        samplers.SAMPLERS, "every_other", samplers.SAMPLERS["knn"]
    )  # removed after the test

    @samplers.register_sampler("every_other")
    def build(index: FragmentIndex, settings: samplers.SamplerSettings) -> KNearestBagSampler:
        return KNearestBagSampler(index, settings.n_views, settings.batch_size, settings.seed + 1)

    index = FragmentIndex(
        video=np.array(["v"] * 8, dtype=object),
        position=np.linspace(0, 1, 8),
        tracklet=np.zeros(8, dtype=np.int64),
    )
    sampler = samplers.make_sampler(
        "every_other", index, 2, 4, max_epochs=1, t_min=1, t_max=1, seed=0
    )
    assert isinstance(sampler, KNearestBagSampler) and sampler.seed == 1
    assert load_train_config("test_tiny", {"sampler": "every_other"}).sampler == "every_other"
    with pytest.raises(ConfigError, match=r"unknown sampler kind 'nope'.*'every_other'"):
        samplers.make_sampler("nope", index, 2, 4, max_epochs=1, t_min=1, t_max=1, seed=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": "three"}, r"TrainConfig\.epochs: expected int, got 'three'"),
        ({"ignore_same_fragment_pairs": 1}, r"ignore_same_fragment_pairs: expected bool"),
        ({"max_steps_per_epoch": 2.5}, r"max_steps_per_epoch: expected int \| None"),
        ({"encoder.d_model": 30}, "divisible by n_heads"),
    ],
)
def test_bad_types_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config("test_tiny", overrides)


def test_loader_converts_lists_and_numbers_to_the_field_types() -> None:
    c = load_msn_config("msn_test_tiny", {"splits": "val", "augment.crop_scale": [0.5, 1.0]})
    assert c.splits == ("val",) and c.augment.crop_scale == (0.5, 1.0)
    assert load_train_config("test_tiny", {"precision": 32}).precision == "32"
    with pytest.raises(ConfigError, match=r"augment: unknown field\(s\) \['blur'\]"):
        load_msn_config("msn_test_tiny", {"augment.blur": 1})
    with pytest.raises(ConfigError, match=r"no MSN config 'nope'.*msn_test_tiny"):
        load_msn_config("nope")
