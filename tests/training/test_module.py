"""The LightningModule: projector shapes, loss selection, duplicate-fragment masking."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("polypindex.model.scoring.evaluation")

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.hmve import EncoderConfig
from polypindex.training.losses import LossSettings, mil_nce
from polypindex.training.module import HmveModule, duplicate_fragment_mask

TINY = EncoderConfig(
    backbone="tiny",
    tiny_width=8,
    d_model=32,
    n_layers=1,
    n_heads=4,
    dim_feedforward=32,
    dropout=0.0,
)


def test_duplicate_fragment_mask() -> None:
    mask = duplicate_fragment_mask(torch.tensor([3, 5, 3, 7, 5]))
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 2), (2, 0), (1, 4), (4, 1)]:
        expected[i, j] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("loss", ["mil_nce", "multi_positive"])
def test_forward_and_loss(loss: str) -> None:
    torch.manual_seed(0)
    module = HmveModule(TINY, loss=loss, d_proj=16)
    frames = torch.randn(6, 3, 3, 32, 32)
    proj = module(frames)
    assert proj.shape == (6, 4, 16)
    value, terms = module.compute_loss(frames, torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6))
    assert torch.isfinite(value)
    value.backward()
    assert module.encoder.cls_token.grad is not None
    assert set(terms) == (
        {"fragment", "frame_across", "frame_within"} if loss == "mil_nce" else {"multi_positive"}
    )


def test_duplicates_are_ignored_in_the_fragment_term() -> None:
    torch.manual_seed(0)
    fragment_term_only = LossSettings(frame_across_weight=0.0, frame_within_weight=0.0)
    module = HmveModule(TINY, d_proj=16, loss_params=fragment_term_only).eval()
    frames = torch.randn(4, 2, 3, 32, 32)
    frames[3] = frames[0]  # fragment 0 drawn again into the other bag
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.tensor([10, 11, 12, 10])
    with torch.no_grad():
        value, _ = module.compute_loss(frames, labels, ids)
        proj = module(frames)[:, 0]
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 3] = ignore[3, 0] = True
    assert float(value) == pytest.approx(float(mil_nce(proj, labels, 0.07, ignore)), rel=1e-5)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        HmveModule(TINY, loss="triplet")
    with pytest.raises(ConfigError, match="lr"):
        HmveModule(TINY, lr=0.0)
