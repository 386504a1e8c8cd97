"""Frame-level Masked Siamese Networks pretraining (SPEC §7).

Unlabelled frame crops (the tracklet boxes of the chosen splits, cropped by
:class:`model.preprocess.CropCache` with the run's :class:`PreprocessConfig`, identities
unused) are pretrained with MSN:

- per image, ``n_anchor_views`` anchor views and one target view, each a random
  crop/flip/colour jitter (:mod:`training.augment`);
- anchor views are masked: ``mask_ratio`` of the patches are zeroed for the ResNets
  (and the tiny conv net), or their tokens dropped for a ViT;
- the target view goes through an EMA copy of the encoder (no gradients);
- both are projected and softly assigned to learned prototypes (cosine / τ); the
  sharpened target assignment supervises the anchors (cross-entropy), plus the
  mean-entropy maximisation regulariser (:func:`training.losses.msn_loss`).

``pretrain_frames(load_msn_config("msn_resnet18", {...}))`` writes ``out_dir/msn.pt``
after every epoch (:func:`model.encoder.save_frame_encoder_checkpoint`: the EMA target
backbone, the crop settings, the MSN config and the epoch), ``out_dir/last.ckpt`` (full
state, for ``resume=True``), CSV logs (``out_dir/logs``) and TensorBoard logs
(``out_dir/tensorboard``). ``msn.pt`` initialises the HMVE frame encoder
(``TrainConfig.init_frame_encoder``) or becomes the frame-mean baseline
(:func:`model.export.export_frame_mean_onnx`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from polypindex.model.coco import load_coco_split
from polypindex.model.config import (
    FragmentConfig,
    PreprocessConfig,
    TrackletConfig,
    parse_overrides,
)
from polypindex.model.encoder import (
    BACKBONES,
    EncoderConfig,
    build_backbone,
    load_frame_encoder_checkpoint,
    save_frame_encoder_checkpoint,
)
from polypindex.model.errors import ConfigError
from polypindex.model.preprocess import CropCache, normalize
from polypindex.model.vit import VisionTransformer
from polypindex.training.augment import AugmentConfig, augment, mask_patches, random_keep_indices
from polypindex.training.datamodule import load_crops
from polypindex.training.losses import msn_loss
from polypindex.training.train import CONFIG_DIR, LAST_CHECKPOINT, _LastCheckpoint, _merge

MSN_CHECKPOINT = "msn.pt"
_NESTED = {
    "preprocess": PreprocessConfig,
    "tracklet": TrackletConfig,
    "fragment": FragmentConfig,
    "augment": AugmentConfig,
}


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
            (the HMVE frame encoders, :data:`model.encoder.BACKBONES`).
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
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in _NESTED:
            out[key] = dataclasses.asdict(out[key])
        out["splits"] = list(self.splits)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MsnConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"MsnConfig: unknown field(s) {unknown}; known fields: {sorted(known)}"
            )
        kwargs = dict(data)
        for key, kind in _NESTED.items():
            value = kwargs.get(key)
            if isinstance(value, Mapping):
                if kind is AugmentConfig:
                    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                    known_aug = {f.name for f in dataclasses.fields(AugmentConfig)}
                    bad = sorted(set(value) - known_aug)
                    if bad:
                        raise ConfigError(
                            f"augment: unknown field(s) {bad}; known: {sorted(known_aug)}"
                        )
                    kwargs[key] = AugmentConfig(**value)
                else:
                    kwargs[key] = kind.from_dict(dict(value))  # type: ignore[attr-defined]
        return cls(**kwargs)


def load_msn_config(
    name_or_path: str | Path, overrides: Mapping[str, Any] | None = None
) -> MsnConfig:
    """Read an MSN preset (``msn_resnet18``, ``msn_vit_tiny``, ``msn_test_tiny``) or a YAML file.

    ``overrides`` as in :func:`training.train.load_train_config` (dotted keys allowed).
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in CONFIG_DIR.glob("msn_*.yaml"))
        raise ConfigError(
            f"no MSN config {str(name_or_path)!r}: not a file and not one of {presets}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an MSN config must be a mapping of fields")
    data.setdefault("name", path.stem)
    return MsnConfig.from_dict(_merge(data, overrides or {}))


class FrameDataset(Dataset[Tensor]):
    """Single normalised frame crops ``[3, H, W]`` (float32) from per-tracklet uint8 crops."""

    def __init__(self, crops: Sequence[np.ndarray], preprocess: PreprocessConfig) -> None:
        self.crops = crops
        self.preprocess = preprocess
        self.items = [(t, j) for t, c in enumerate(crops) for j in range(len(c))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> Tensor:
        t, j = self.items[item]
        return torch.from_numpy(normalize(self.crops[t][j], self.preprocess))


def load_frames(config: MsnConfig) -> FrameDataset:
    """The frames of ``config.splits`` on each tracklet's stride grid, cropped and cached.

    Raises:
        ConfigError: no frame, or fewer frames than one batch.
    """
    cache = CropCache(config.resolved_cache_dir, config.preprocess)
    crops: list[np.ndarray] = []
    for split in config.splits:
        tracklets = load_coco_split(config.data_root, split).tracklets(config.tracklet)
        crops.extend(load_crops(tracklets, cache, config.fragment.stride))
    dataset = FrameDataset(crops, config.preprocess)
    if len(dataset) < config.batch_size:
        raise ConfigError(
            f"{config.data_root} {list(config.splits)} gives {len(dataset)} frame(s) (stride "
            f"{config.fragment.stride}, tracklets of >= {config.tracklet.min_tracklet_length} frames), "
            f"fewer than one batch of {config.batch_size}: lower batch_size, fragment.stride or "
            f"tracklet.min_tracklet_length, or add splits"
        )
    return dataset


class Projector(nn.Module):
    """MSN projection head: ``F → hidden → hidden → dim`` with LayerNorm + GELU."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def ema_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine schedule of the EMA momentum from ``start`` (step 0) to ``end`` (last step)."""
    if total_steps <= 1:
        return float(end)
    progress = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return float(end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class MsnModule(L.LightningModule):
    """Online encoder (backbone + projector), EMA target encoder and prototypes.

    Batches: normalised frames ``[B, 3, H, W]``. Each step draws ``n_anchor_views``
    masked anchor views and one target view per frame.
    """

    def __init__(self, config: MsnConfig, total_steps: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters({"msn_config": config.to_dict(), "total_steps": total_steps})
        self.config = config
        self.total_steps = max(1, total_steps)
        self.backbone, self.feature_dim = build_backbone(config.encoder_config)
        self.projector = Projector(self.feature_dim, config.projector_hidden, config.projector_dim)
        self.prototypes = nn.Parameter(torch.empty(config.n_prototypes, config.projector_dim))
        nn.init.normal_(self.prototypes, std=0.02)
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in (*self.target_backbone.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._losses: list[float] = []
        self.epoch_train_loss = float("nan")

    def _encode_anchor(self, views: Tensor, generator: torch.Generator) -> Tensor:
        """Masked anchor features ``[n, F]``: token dropping for a ViT, zeroed patches else."""
        cfg = self.config
        if isinstance(self.backbone, VisionTransformer):
            n_patches = self.backbone.n_patches(views.shape[-1])
            keep = random_keep_indices(views.shape[0], n_patches, cfg.mask_ratio, generator)
            return self.backbone(views, keep=keep.to(views.device))
        n_patches = (views.shape[-1] // cfg.mask_patch_size) ** 2
        keep = random_keep_indices(views.shape[0], n_patches, cfg.mask_ratio, generator)
        return self.backbone(mask_patches(views, keep, cfg.mask_patch_size))

    def compute_loss(
        self, frames: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The MSN loss of one batch of frames ``[B, 3, H, W]``."""
        cfg = self.config
        gen = generator or self.generator
        anchors = torch.cat(
            [augment(frames, cfg.augment, cfg.preprocess, gen) for _ in range(cfg.n_anchor_views)]
        )
        target_view = augment(frames, cfg.augment, cfg.preprocess, gen)
        anchor_z = self.projector(self._encode_anchor(anchors, gen))
        with torch.no_grad():
            target_z = self.target_projector(self.target_backbone(target_view))
        return msn_loss(
            anchor_z,
            target_z,
            self.prototypes,
            cfg.temperature,
            cfg.sharpen_temperature,
            cfg.me_max_weight,
        )

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, terms = self.compute_loss(batch)
        size = batch.shape[0]
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=True,
        )
        for name, value in terms.items():
            self.log(
                f"train_{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=True,
            )
        self.log("ema_momentum", self.momentum, on_step=True, on_epoch=False, batch_size=size)
        self._losses.append(float(loss.detach()))
        return loss

    @property
    def momentum(self) -> float:
        cfg = self.config
        return ema_momentum(self.global_step, self.total_steps, cfg.ema_start, cfg.ema_end)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target ← m · target + (1 − m) · online`` (parameters; buffers copied)."""
        pairs = ((self.backbone, self.target_backbone), (self.projector, self.target_projector))
        for online, target in pairs:
            for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
                p_t.mul_(momentum).add_(p_o.detach(), alpha=1.0 - momentum)
            for b_o, b_t in zip(online.buffers(), target.buffers(), strict=True):
                b_t.copy_(b_o)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_target(self.momentum)

    def on_train_epoch_start(self) -> None:
        self._losses = []

    def on_train_epoch_end(self) -> None:
        self.epoch_train_loss = float(np.mean(self._losses)) if self._losses else float("nan")

    def configure_optimizers(self) -> Any:
        cfg = self.config
        params = [p for p in self.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, self.total_steps // cfg.epochs)
        warmup = cfg.warmup_epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, self.total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
        return {
            "optimizer": optimiser,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class _SaveFrameEncoder(Callback):
    """Writes ``msn.pt`` (the EMA target backbone, config and epoch) after every epoch."""

    def __init__(self, config: MsnConfig, path: Path) -> None:
        self.config = config
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, MsnModule)
        if not trainer.is_global_zero:
            return
        save_msn_checkpoint(self.path, pl_module, trainer.current_epoch + 1)


def save_msn_checkpoint(path: Path, module: MsnModule, epochs_done: int) -> str:
    """Save the EMA target backbone of ``module`` as a frame-encoder checkpoint."""
    cfg = module.config
    extra = {
        "kind": "msn",
        "epoch": epochs_done,
        "epochs": cfg.epochs,
        "train_loss": module.epoch_train_loss,
        "msn_config": cfg.to_dict(),
        "config_name": cfg.name,
    }
    return save_frame_encoder_checkpoint(
        path,
        module.target_backbone,
        cfg.backbone,
        cfg.preprocess,
        cfg.fragment,
        tiny_width=cfg.tiny_width,
        extra=extra,
    )


@dataclass(frozen=True)
class MsnResult:
    """What :func:`pretrain_frames` produced.

    Attributes:
        checkpoint: ``out_dir/msn.pt``.
        epochs_trained: epochs finished in all (a resumed run counts the earlier ones).
        n_frames: frames in the training set.
        final_loss: mean training loss of the last epoch.
    """

    checkpoint: Path
    epochs_trained: int
    n_frames: int
    final_loss: float


def pretrain_frames(
    config: MsnConfig,
    progress: bool = True,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> MsnResult:
    """Pretrain a frame encoder with MSN; see the module docstring for the files written.

    Raises:
        ConfigError: too few frames for a batch, or ``resume`` without ``last.ckpt``.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: no {last}; run without --resume to start from scratch")
    L.seed_everything(config.seed, workers=True, verbose=False)
    dataset = load_frames(config)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    steps = len(loader)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    module = MsnModule(config, total_steps=steps * config.epochs)
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,  # type: ignore[arg-type]
        limit_train_batches=config.max_steps_per_epoch,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        logger=[
            CSVLogger(str(out), name="logs"),
            TensorBoardLogger(str(out), name="tensorboard", default_hp_metric=False),
        ],
        callbacks=[
            _SaveFrameEncoder(config, out / MSN_CHECKPOINT),
            _LastCheckpoint(last),
            *callbacks,
        ],
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume else None)
    checkpoint = out / MSN_CHECKPOINT
    epochs_done = trainer.current_epoch
    if trainer.is_global_zero and not checkpoint.is_file():  # resumed an already finished run
        save_msn_checkpoint(checkpoint, module, epochs_done)
    loaded_epoch = load_frame_encoder_checkpoint(checkpoint).extra.get("epoch", epochs_done)
    return MsnResult(checkpoint, int(loaded_epoch), len(dataset), module.epoch_train_loss)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m polypindex.training.msn msn_test_tiny --data DIR --out DIR --set epochs=2``."""
    parser = argparse.ArgumentParser(description="MSN pretraining of the frame encoder.")
    parser.add_argument("config", help="MSN preset (msn_resnet18, msn_vit_tiny, ...) or YAML path")
    parser.add_argument("--data", help="dataset folder (overrides data_root)")
    parser.add_argument("--out", help="output folder (overrides out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.data:
        overrides["data_root"] = args.data
    if args.out:
        overrides["out_dir"] = args.out
    result = pretrain_frames(load_msn_config(args.config, overrides), resume=args.resume)
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(result).items()}, indent=2))


if __name__ == "__main__":
    main()
