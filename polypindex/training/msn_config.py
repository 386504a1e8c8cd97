"""The settings of one frame-level MSN pretraining run (docs/method.md#frame-pretraining) and
the loader of its
YAML presets (``msn_*``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.nets.hmve import BACKBONES, EncoderConfig
from polypindex.training.augment import AugmentConfig
from polypindex.training.presets import config_from_dict, config_to_dict, load_preset


@dataclass(frozen=True)
class MsnConfig:
    """One MSN pretraining run (validated on construction).

    Attributes:
        name: the preset's name (recorded in the checkpoint).
        data_root: dataset folder; only its images and boxes are used.
        out_dir: where ``msn.pt``, ``last.ckpt`` and the logs go.
        cache_dir: crop cache folder (default ``{data_root}/.crop_cache``).
        splits: the splits whose frames are used.
        backbone: ``resnet18`` | ``resnet50`` | ``tiny`` | ``vit_tiny`` | ``vit_micro``
            (the HMVE frame encoders, :data:`model.nets.encoder.BACKBONES`).
        tiny_width: width of the ``tiny`` backbone.
        preprocess: crop settings (stored in the checkpoint; use the HMVE run's).
        tracklet: how annotations become tracklets (whose boxes are cropped).
        fragment: ``stride`` picks every stride-th frame of a tracklet; the checkpoint
            keeps it (with ``max_frames``) as the frame-mean encoder's indexing rule.
        augment: the random view augmentation.
        n_anchor_views: masked anchor views per image.
        mask_ratio: fraction of patches masked in an anchor view.
        mask_patch_size: side of a masked patch for the conv backbones (a ViT masks
            its own patches).
        projector_hidden, projector_dim: the projection MLP
            (``F → hidden → hidden → dim``, LayerNorm + GELU).
        n_prototypes: learned prototypes.
        temperature: τ of the prototype assignments.
        sharpen_temperature: T of the target sharpening.
        me_max_weight: weight of the mean-entropy maximisation term.
        ema_start, ema_end: EMA momentum of the target encoder, raised on a cosine
            schedule from ``ema_start`` to ``ema_end`` over the training steps.
        batch_size: images per step (per process).
        lr, weight_decay: AdamW settings (cosine decay to 0 after ``warmup_epochs``).
        warmup_epochs: linear learning-rate warm-up.
        epochs: training epochs.
        max_steps_per_epoch: cap on steps per epoch (``None`` = all images).
        seed: seeds everything, including the views.
        precision, accelerator, devices, num_nodes, strategy: Lightning settings.
        num_workers: DataLoader worker processes.
    """

    name: str = "custom"
    data_root: str = "var/data/synth"
    out_dir: str = "var/models/msn"
    cache_dir: str | None = None
    splits: tuple[str, ...] = ("train",)
    backbone: str = "resnet18"
    tiny_width: int = 32
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tracklet: TrackletConfig = field(default_factory=TrackletConfig)
    fragment: FragmentConfig = field(default_factory=FragmentConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    n_anchor_views: int = 1
    mask_ratio: float = 0.5
    mask_patch_size: int = 8
    projector_hidden: int = 1024
    projector_dim: int = 256
    n_prototypes: int = 1024
    temperature: float = 0.1
    sharpen_temperature: float = 0.25
    me_max_weight: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_epochs: int = 1
    epochs: int = 10
    max_steps_per_epoch: int | None = None
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.splits, str | list):
            splits = [self.splits] if isinstance(self.splits, str) else self.splits
            object.__setattr__(self, "splits", tuple(splits))
        if not self.splits:
            raise ConfigError("splits must name at least one split, e.g. [train]")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.n_anchor_views < 1:
            raise ConfigError(f"n_anchor_views must be >= 1, got {self.n_anchor_views}")
        if not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_patch_size < 1 or self.preprocess.im_size % self.mask_patch_size:
            raise ConfigError(
                f"preprocess.im_size ({self.preprocess.im_size}) must be a multiple of "
                f"mask_patch_size ({self.mask_patch_size})"
            )
        if min(self.projector_hidden, self.projector_dim, self.n_prototypes) < 1:
            raise ConfigError("projector_hidden, projector_dim and n_prototypes must be >= 1")
        if not (self.temperature > 0 and self.sharpen_temperature > 0):
            raise ConfigError("temperature and sharpen_temperature must be > 0")
        if self.me_max_weight < 0:
            raise ConfigError(f"me_max_weight must be >= 0, got {self.me_max_weight}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ConfigError(
                f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}"
            )
        if self.batch_size < 2:
            raise ConfigError(
                f"batch_size must be >= 2 (me-max needs a batch), got {self.batch_size}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.epochs < 1 or self.warmup_epochs < 0:
            raise ConfigError(f"need epochs >= 1 and warmup_epochs >= 0, got {self.epochs}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(
                f"max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}"
            )
        if self.num_workers < 0 or self.num_nodes < 1:
            raise ConfigError("num_workers must be >= 0 and num_nodes >= 1")

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_root) / ".crop_cache"

    @property
    def encoder_config(self) -> EncoderConfig:
        """The backbone as an :class:`EncoderConfig` (HMVE fields at their defaults)."""
        return EncoderConfig(backbone=self.backbone, tiny_width=self.tiny_width)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MsnConfig:
        return config_from_dict(cls, data)


def load_msn_config(
    name_or_path: str | Path, overrides: Mapping[str, Any] | None = None
) -> MsnConfig:
    """Read an MSN preset (``msn_resnet18``, ``msn_vit_tiny``, ``msn_test_tiny``) or a YAML file.

    ``overrides`` as in :func:`training.train_config.load_train_config` (dotted keys allowed).
    """
    return load_preset(MsnConfig, name_or_path, overrides, what="MSN", pattern="msn_*.yaml")
