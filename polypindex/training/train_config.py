"""The settings of one HMVE training run (docs/method.md#training) and the loader of its YAML
presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.nets.hmve import EncoderConfig
from polypindex.training.bag_schedule import T_SCHEDULES
from polypindex.training.losses import LOSSES, LossSettings, loss_names
from polypindex.training.precision import CHANNELS_LAST_CHOICES
from polypindex.training.presets import (
    available_presets,
    config_from_dict,
    config_to_dict,
    merge_overrides,
    read_preset,
)
from polypindex.training.samplers import SAMPLERS, sampler_names

MONITORS = {"val_map": "max", "val_loss": "min"}

# The loss settings were once top-level fields; configs and checkpoints
# (``extra["train_config"]``) that still have them flat are read into ``loss_params``.
FLAT_LOSS_KEYS = {
    "loss_temperature": "temperature",
    "fragment_weight": "fragment_weight",
    "frame_across_weight": "frame_across_weight",
    "frame_within_weight": "frame_within_weight",
    "ignore_same_fragment_pairs": "ignore_same_fragment_pairs",
    "soft_sigma": "soft_sigma",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (validated on construction).

    Attributes:
        name: the preset's name (recorded in the checkpoint).
        data_root: dataset folder with ``train`` and ``val`` splits.
        out_dir: where ``encoder.pt``, ``history.json`` and logs go.
        cache_dir: crop cache folder (default ``{data_root}/.crop_cache``).
        encoder: the HMVE architecture.
        preprocess: crop settings (``im_size`` ...), stored in the checkpoint.
        tracklet: how annotations become tracklets.
        fragment: how tracklets become training fragments (``fragment_length`` > 0);
            evaluation embeds whole tracklets with the same stride.
        sampler: ``temporal_temperature`` | ``knn`` | ``identity`` (or another name in
            :data:`training.samplers.SAMPLERS`).
        loss: ``mil_nce`` | ``multi_positive`` | ``soft_multi_positive`` (targets over bag
            members weighted by exp(−Δt / ``loss_params.soft_sigma``)), or another name in
            :data:`training.losses.LOSSES`.
        loss_params: the loss settings, :class:`training.losses.LossSettings` (τ, the
            MIL-NCE term weights, ``soft_sigma``); the flat keys of :data:`FLAT_LOSS_KEYS`
            (``loss_temperature``, ``soft_sigma``, ...) are accepted as aliases.
        n_views: bag size (anchor + n_views − 1).
        batch_size: fragments per batch, a multiple of ``n_views``.
        lr, weight_decay: AdamW settings.
        epochs: training epochs (also the length of the temperature schedule).
        t_min, t_max: bag temperature at the first and the last epoch.
        t_schedule: ``last_epoch`` (``t_max`` at the last epoch, progress
            ``epoch / (epochs − 1)``) or ``reference`` (the reference implementation's
            ``epoch / epochs``, which stops short of ``t_max``); docs/method.md#temporal-bags.
        seed: seeds Python, numpy, torch and the samplers.
        precision: ``auto`` (bf16 mixed precision where the CPU or GPU computes bf16
            natively, else ``32-true``: :mod:`training.precision`) or a Lightning precision
            (``32-true``, ``16-mixed``, ``bf16-mixed``).
        channels_last: ``auto`` (channels-last conv weights under mixed precision),
            ``true`` or ``false``.
        accumulate_grad_batches: gradient accumulation steps.
        max_steps_per_epoch: cap on training batches per epoch (``None`` = all).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: devices per node (an int, or ``"auto"``); ``> 1`` needs a DDP strategy.
        num_nodes: machines taking part (DDP).
        strategy: Lightning strategy (``auto``, ``ddp``, ``ddp_spawn``, ...). With DDP each
            process gets every ``world_size``-th bag batch (the remainder is dropped).
        monitor: ``val_map`` (higher is better) or ``val_loss``: picks the best epoch.
        num_workers: DataLoader worker processes.
        eval_batch_size: tracklets per evaluation forward pass.
        d_proj: projector output size.
        train_split, val_split: split names.
        max_val_loss_batches: cap on validation bag batches for the val loss
            (``None`` = all; the same fixed batches every epoch).
        init_frame_encoder: an MSN checkpoint (``polypindex pretrain-frames``) whose
            backbone initialises the HMVE frame encoder; its backbone must equal
            ``encoder.backbone``.
    """

    name: str = "custom"
    data_root: str = "var/data/synth"
    out_dir: str = "var/train/custom"
    cache_dir: str | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tracklet: TrackletConfig = field(default_factory=TrackletConfig)
    fragment: FragmentConfig = field(default_factory=FragmentConfig)
    sampler: str = "temporal_temperature"
    loss: str = "mil_nce"
    loss_params: LossSettings = field(default_factory=LossSettings)
    n_views: int = 5
    batch_size: int = 60
    lr: float = 1e-5
    weight_decay: float = 1e-4
    epochs: int = 50
    t_min: float = 0.3
    t_max: float = 12.0
    t_schedule: str = "last_epoch"
    seed: int = 0
    precision: str = "32-true"
    channels_last: str | bool = "auto"
    accumulate_grad_batches: int = 1
    max_steps_per_epoch: int | None = None
    accelerator: str = "auto"
    monitor: str = "val_map"
    num_workers: int = 0
    eval_batch_size: int = 32
    d_proj: int = 128
    train_split: str = "train"
    val_split: str = "val"
    max_val_loss_batches: int | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    init_frame_encoder: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {sampler_names()}, got {self.sampler!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {loss_names()}, got {self.loss!r}")
        if self.t_schedule not in T_SCHEDULES:
            raise ConfigError(
                f"t_schedule must be one of {list(T_SCHEDULES)}, got {self.t_schedule!r}"
            )
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.n_views < 2:
            raise ConfigError(f"n_views must be >= 2, got {self.n_views}")
        if self.batch_size <= 0 or self.batch_size % self.n_views:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a positive multiple of n_views ({self.n_views}); "
                f"e.g. batch_size={max(1, self.batch_size // self.n_views) * self.n_views}"
            )
        if self.fragment.fragment_length == -1:
            raise ConfigError(
                "fragment.fragment_length must be > 0 for training (evaluation uses whole tracklets)"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 < self.t_min <= self.t_max:
            raise ConfigError(
                f"need 0 < t_min <= t_max, got t_min={self.t_min}, t_max={self.t_max}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(
                f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}"
            )
        if self.accumulate_grad_batches < 1:
            raise ConfigError(
                f"accumulate_grad_batches must be >= 1, got {self.accumulate_grad_batches}"
            )
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(
                f"max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}"
            )
        if self.max_val_loss_batches is not None and self.max_val_loss_batches < 1:
            raise ConfigError(
                f"max_val_loss_batches must be >= 1 or null, got {self.max_val_loss_batches}"
            )
        if self.num_workers < 0 or self.eval_batch_size < 1:
            raise ConfigError("num_workers must be >= 0 and eval_batch_size >= 1")
        if isinstance(self.devices, bool) or not (
            (isinstance(self.devices, int) and (self.devices >= 1 or self.devices == -1))
            or self.devices == "auto"
        ):
            raise ConfigError(f"devices must be an int >= 1, -1 or 'auto', got {self.devices!r}")
        if self.num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ConfigError(f"strategy must be a Lightning strategy name, got {self.strategy!r}")
        if self.channels_last not in CHANNELS_LAST_CHOICES:
            raise ConfigError(
                f"channels_last must be auto, true or false, got {self.channels_last!r}"
            )

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_root) / ".crop_cache"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """From plain data (:meth:`to_dict`'s, or an older flat one: :data:`FLAT_LOSS_KEYS`)."""
        return config_from_dict(cls, nest_loss_keys(data))


def nest_loss_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the flat loss keys of :data:`FLAT_LOSS_KEYS` moved into
    ``loss_params`` (where they win over the same nested key)."""
    flat = {f"loss_params.{FLAT_LOSS_KEYS[k]}": v for k, v in data.items() if k in FLAT_LOSS_KEYS}
    if not flat:
        return dict(data)
    rest = {k: v for k, v in data.items() if k not in FLAT_LOSS_KEYS}
    return merge_overrides(merge_overrides({}, rest), flat)


def available_configs() -> list[str]:
    """Names of the presets in ``training/configs``."""
    return available_presets()


def load_train_config(
    name_or_path: str | Path, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a preset (``demo``, ``paper``, ``supervised``, ``test_tiny``) or a YAML file.

    Args:
        name_or_path: a name in ``training/configs`` or a path to a YAML file.
        overrides: field values replacing the file's; nested fields either as
            dicts (``{"encoder": {"d_model": 32}}``) or dotted keys (``"encoder.d_model"``).

    Raises:
        ConfigError: unknown preset, unreadable YAML, or an invalid/unknown field.
    """
    data = nest_loss_keys(read_preset(name_or_path, "training"))
    return TrainConfig.from_dict(merge_overrides(data, nest_loss_keys(overrides or {})))
