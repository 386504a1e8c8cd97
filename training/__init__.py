"""Self-supervised training of the tracklet encoder (SPEC §5).

Light re-exports: samplers and losses import eagerly; the Lightning pieces
(``FragmentDataModule``, ``HmveModule``, ``TrainConfig``) load on first access.
The training function is ``training.train.train`` (the submodule shares its name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polypindex.training.losses import (
    MilNceLoss,
    mil_nce,
    msn_loss,
    multi_positive_contrastive,
    soft_multi_positive_contrastive,
)
from polypindex.training.samplers import (
    BagSampler,
    FragmentIndex,
    IdentityBagSampler,
    KNearestBagSampler,
    TemporalTemperatureBagSampler,
    bag_noise_rate,
)

if TYPE_CHECKING:
    from polypindex.training.datamodule import FragmentDataModule, embed_tracklets_torch
    from polypindex.training.module import HmveModule
    from polypindex.training.msn import MsnConfig, load_msn_config, pretrain_frames
    from polypindex.training.train import TrainConfig, TrainResult, load_train_config

_LAZY = {
    "FragmentDataModule": "polypindex.training.datamodule",
    "embed_tracklets_torch": "polypindex.training.datamodule",
    "HmveModule": "polypindex.training.module",
    "MsnConfig": "polypindex.training.msn",
    "load_msn_config": "polypindex.training.msn",
    "pretrain_frames": "polypindex.training.msn",
    "TrainConfig": "polypindex.training.train",
    "TrainResult": "polypindex.training.train",
    "load_train_config": "polypindex.training.train",
}

__all__ = [
    "BagSampler",
    "FragmentDataModule",
    "FragmentIndex",
    "HmveModule",
    "IdentityBagSampler",
    "KNearestBagSampler",
    "MilNceLoss",
    "MsnConfig",
    "TemporalTemperatureBagSampler",
    "TrainConfig",
    "TrainResult",
    "bag_noise_rate",
    "embed_tracklets_torch",
    "load_msn_config",
    "load_train_config",
    "mil_nce",
    "msn_loss",
    "multi_positive_contrastive",
    "pretrain_frames",
    "soft_multi_positive_contrastive",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
