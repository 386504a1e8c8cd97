"""Self-supervised training of the tracklet encoder (docs/method.md#training).

Every name loads on first access, so importing a light submodule (``training.plots``,
``training.presets``) does not import torch. The training function is
``training.train.train`` (the submodule shares its name).

Losses and bag samplers are chosen by name from two registries:
:data:`training.losses.LOSSES` (:func:`training.losses.register_loss`) and
:data:`training.samplers.SAMPLERS` (:func:`training.samplers.register_sampler`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polypindex.training.datamodule import FragmentDataModule, embed_tracklets_torch
    from polypindex.training.losses import (
        LOSSES,
        MilNceLoss,
        mil_nce,
        msn_loss,
        multi_positive_contrastive,
        register_loss,
        soft_multi_positive_contrastive,
    )
    from polypindex.training.module import HmveModule
    from polypindex.training.msn import pretrain_frames
    from polypindex.training.msn_config import MsnConfig, load_msn_config
    from polypindex.training.presets import load_preset
    from polypindex.training.samplers import (
        SAMPLERS,
        BagSampler,
        FragmentIndex,
        IdentityBagSampler,
        KNearestBagSampler,
        TemporalTemperatureBagSampler,
        bag_noise_rate,
        register_sampler,
    )
    from polypindex.training.train import TrainResult
    from polypindex.training.train_config import TrainConfig, load_train_config

_LAZY = {
    "FragmentDataModule": "polypindex.training.datamodule",
    "embed_tracklets_torch": "polypindex.training.datamodule",
    "LOSSES": "polypindex.training.losses",
    "MilNceLoss": "polypindex.training.losses",
    "mil_nce": "polypindex.training.losses",
    "msn_loss": "polypindex.training.losses",
    "multi_positive_contrastive": "polypindex.training.losses",
    "register_loss": "polypindex.training.losses",
    "soft_multi_positive_contrastive": "polypindex.training.losses",
    "HmveModule": "polypindex.training.module",
    "MsnConfig": "polypindex.training.msn_config",
    "load_msn_config": "polypindex.training.msn_config",
    "pretrain_frames": "polypindex.training.msn",
    "load_preset": "polypindex.training.presets",
    "SAMPLERS": "polypindex.training.samplers",
    "BagSampler": "polypindex.training.samplers",
    "FragmentIndex": "polypindex.training.samplers",
    "IdentityBagSampler": "polypindex.training.samplers",
    "KNearestBagSampler": "polypindex.training.samplers",
    "TemporalTemperatureBagSampler": "polypindex.training.samplers",
    "bag_noise_rate": "polypindex.training.samplers",
    "register_sampler": "polypindex.training.samplers",
    "TrainResult": "polypindex.training.train",
    "TrainConfig": "polypindex.training.train_config",
    "load_train_config": "polypindex.training.train_config",
}

__all__ = [
    "LOSSES",
    "SAMPLERS",
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
    "load_preset",
    "load_train_config",
    "mil_nce",
    "msn_loss",
    "multi_positive_contrastive",
    "pretrain_frames",
    "register_loss",
    "register_sampler",
    "soft_multi_positive_contrastive",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
