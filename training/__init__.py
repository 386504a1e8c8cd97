"""Self-supervised training of the tracklet encoder (SPEC §5).

Light re-exports: samplers and losses import eagerly; the Lightning pieces
(``FragmentDataModule``, ``HmveModule``, ``TrainConfig``) load on first access.
The training function is ``training.train.train`` (the submodule shares its name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.losses import (
    MilNceLoss,
    mil_nce,
    msn_loss,
    multi_positive_contrastive,
    soft_multi_positive_contrastive,
)
from training.samplers import (
    BagSampler,
    FragmentIndex,
    IdentityBagSampler,
    KNearestBagSampler,
    TemporalTemperatureBagSampler,
    bag_noise_rate,
)

if TYPE_CHECKING:
    from training.datamodule import FragmentDataModule, embed_tracklets_torch
    from training.module import HmveModule
    from training.msn import MsnConfig, load_msn_config, pretrain_frames
    from training.train import TrainConfig, TrainResult, load_train_config

_LAZY = {
    "FragmentDataModule": "training.datamodule",
    "embed_tracklets_torch": "training.datamodule",
    "HmveModule": "training.module",
    "MsnConfig": "training.msn",
    "load_msn_config": "training.msn",
    "pretrain_frames": "training.msn",
    "TrainConfig": "training.train",
    "TrainResult": "training.train",
    "load_train_config": "training.train",
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
