"""Frame-level Masked Siamese Networks pretraining (docs/method.md#frame-pretraining).

Unlabelled frame crops (the tracklet boxes of the chosen splits, cropped by
:class:`model.data.preprocess.CropCache` with the run's :class:`PreprocessConfig`, identities
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
after every epoch (:func:`model.nets.encoder.save_frame_encoder_checkpoint`: the EMA target
backbone, the crop settings, the MSN config and the epoch), ``out_dir/last.ckpt`` (full
state, for ``resume=True``), CSV logs (``out_dir/logs``) and TensorBoard logs
(``out_dir/tensorboard``). ``msn.pt`` initialises the HMVE frame encoder
(``TrainConfig.init_frame_encoder``) or becomes the frame-mean baseline
(:func:`model.nets.export.export_frame_mean_onnx`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.nets.encoder import (
    load_frame_encoder_checkpoint,
    save_frame_encoder_checkpoint,
)
from polypindex.model.nets.hmve import build_backbone
from polypindex.model.nets.vit import VisionTransformer
from polypindex.training.augment import augment, mask_patches, random_keep_indices
from polypindex.training.datamodule import load_crops
from polypindex.training.losses import msn_loss
from polypindex.training.msn_config import MsnConfig
from polypindex.training.trainer import LastCheckpoint, log_train_step, make_trainer, start_run

__all__ = ["MSN_CHECKPOINT", "MsnModule", "MsnResult", "pretrain_frames"]

MSN_CHECKPOINT = "msn.pt"


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
        log_train_step(self, loss, terms, size)
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
    out, last = start_run(config, resume)
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
    trainer = make_trainer(
        config,
        out,
        [_SaveFrameEncoder(config, out / MSN_CHECKPOINT), LastCheckpoint(last), *callbacks],
        progress,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resume else None)
    checkpoint = out / MSN_CHECKPOINT
    epochs_done = trainer.current_epoch
    if trainer.is_global_zero and not checkpoint.is_file():  # resumed an already finished run
        save_msn_checkpoint(checkpoint, module, epochs_done)
    loaded_epoch = load_frame_encoder_checkpoint(checkpoint).extra.get("epoch", epochs_done)
    return MsnResult(checkpoint, int(loaded_epoch), len(dataset), module.epoch_train_loss)
