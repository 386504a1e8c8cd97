"""The LightningModule: HMVE + a training-only projector, trained with a loss of the
registry :data:`training.losses.LOSSES` (MIL-NCE, the supervised multi-positive loss,
...), validated by retrieval mAP on whole tracklets."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.nets.hmve import HMVE, EncoderConfig
from polypindex.model.scoring.evaluation import retrieval_metrics
from polypindex.training.losses import LossBatch, LossSettings, get_loss
from polypindex.training.samplers import FragmentIndex
from polypindex.training.trainer import log_train_step


class Projector(nn.Module):
    """``d_model → d_model → ReLU → d_proj``, applied to every token (not exported)."""

    def __init__(self, d_model: int, d_proj: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_proj)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """``[..., d_model] → [..., d_proj]``."""
        return self.net(tokens)


def duplicate_fragment_mask(fragment_ids: Tensor) -> Tensor:
    """(B, B) bool: off-diagonal pairs that are the same fragment drawn twice in a batch."""
    same = fragment_ids[:, None] == fragment_ids[None, :]
    return same & ~torch.eye(len(fragment_ids), dtype=torch.bool, device=fragment_ids.device)


class HmveModule(L.LightningModule):
    """HMVE encoder + projector.

    Args:
        encoder_config: the HMVE architecture.
        loss: a name in :data:`training.losses.LOSSES`: ``"mil_nce"`` (three-term, bag
            labels), ``"multi_positive"`` (fragment level, labels = bag labels; identity
            codes with identity bags) or ``"soft_multi_positive"`` (its distance-aware
            version: targets over bag members ∝ exp(−Δt / σ); needs
            :meth:`set_fragment_times`), or any loss registered with
            :func:`training.losses.register_loss`.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        d_proj: projector output size.
        loss_params: the loss settings (τ, MIL-NCE term weights, σ of the soft loss;
            default :class:`training.losses.LossSettings`'s).

    Batches: training ``(frames [B, s, 3, H, W], labels [B], fragment ids [B])``;
    validation loader 0 ``(frames [b, s, 3, H, W], tracklet idx [b], identity code [b])``
    (embedded for mAP), loader 1 like training (val loss).

    After each validation epoch, :attr:`last_eval` holds ``val_map``, ``val_hit_rate_1``,
    ``val_hit_rate_5`` and ``val_loss`` (NaN without val bags).
    """

    def __init__(
        self,
        encoder_config: EncoderConfig,
        loss: str = "mil_nce",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        d_proj: int = 128,
        loss_params: LossSettings | None = None,
    ) -> None:
        super().__init__()
        self.loss_spec = get_loss(loss)
        self.loss_params = loss_params or LossSettings()
        if lr <= 0 or weight_decay < 0:
            raise ConfigError(
                f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}"
            )
        self.save_hyperparameters(
            {
                "encoder_config": encoder_config.to_dict(),
                "loss": loss,
                "lr": lr,
                "weight_decay": weight_decay,
                "d_proj": d_proj,
                "loss_params": dataclasses.asdict(self.loss_params),
            }
        )
        self.encoder_config = encoder_config
        self.encoder = HMVE(encoder_config)
        self.projector = Projector(encoder_config.d_model, d_proj)
        self.loss_kind = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss_fn = self.loss_spec.build(self.loss_params)
        # per-fragment (time, video code) of the train / val fragments, for the soft loss
        self._fragment_times: dict[str, tuple[Tensor, Tensor]] = {}
        self.last_eval: dict[str, float] = {}
        self._train_losses: list[float] = []
        self._val_losses: list[float] = []
        self._val_embeddings: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def forward(self, frames: Tensor) -> Tensor:
        """``[b, s, 3, H, W] → [b, 1+s, d_proj]`` projected tokens."""
        return self.projector(self.encoder(frames))

    def set_fragment_times(self, **indexes: FragmentIndex) -> None:
        """Give the soft loss each fragment's time: ``set_fragment_times(train=..., val=...)``.

        A fragment's time is its normalised position in its video
        (:attr:`FragmentIndex.position`); its video becomes an int code.
        """
        for split, index in indexes.items():
            _, videos = np.unique(np.asarray([str(v) for v in index.video]), return_inverse=True)
            self._fragment_times[split] = (
                torch.as_tensor(np.asarray(index.position, dtype=np.float32)),
                torch.as_tensor(videos.astype(np.int64)),
            )

    def compute_loss(
        self, frames: Tensor, labels: Tensor, fragment_ids: Tensor, split: str = "train"
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The configured loss on one bag batch; pairs of one fragment drawn twice are ignored.

        ``split`` names the fragment set ``fragment_ids`` index (for the times a loss
        registered with ``needs_times`` reads).
        """
        proj = self(frames)
        batch = LossBatch(proj, labels, duplicate_fragment_mask(fragment_ids))
        if self.loss_spec.needs_times:
            if split not in self._fragment_times:
                raise ConfigError(
                    f"loss {self.loss_kind} needs fragment times for split {split!r}: "
                    f"call HmveModule.set_fragment_times({split}=FragmentIndex)"
                )
            times, videos = self._fragment_times[split]
            ids = fragment_ids.cpu()
            batch = LossBatch(
                proj,
                labels,
                batch.ignore_mask,
                times=times[ids].to(proj.device),
                groups=videos[ids].to(proj.device),
            )
        return self.loss_fn(batch)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        frames, labels, fragment_ids = batch
        loss, terms = self.compute_loss(frames, labels, fragment_ids)
        log_train_step(self, loss, terms, frames.shape[0])
        self._train_losses.append(float(loss.detach()))
        return loss

    @property
    def epoch_train_loss(self) -> float:
        """Mean training loss of the current (or last) epoch's batches."""
        return float(np.mean(self._train_losses)) if self._train_losses else float("nan")

    def on_train_epoch_start(self) -> None:
        self._train_losses = []

    def on_validation_epoch_start(self) -> None:
        self._val_losses = []
        self._val_embeddings = []

    def validation_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == 0:
            frames, tracklet_idx, identity = batch
            emb = self.encoder.embed(frames).float()
            self._val_embeddings.append(
                (tracklet_idx.cpu().numpy(), emb.cpu().numpy(), identity.cpu().numpy())
            )
        else:
            frames, labels, fragment_ids = batch
            loss, _ = self.compute_loss(frames, labels, fragment_ids, split="val")
            self._val_losses.append(float(loss))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = {
            "val_loss": float(np.mean(self._val_losses)) if self._val_losses else float("nan")
        }
        if self._val_embeddings:
            order = np.concatenate([i for i, _, _ in self._val_embeddings])
            emb = np.concatenate([e for _, e, _ in self._val_embeddings])[np.argsort(order)]
            ident = np.concatenate([c for _, _, c in self._val_embeddings])[np.argsort(order)]
            try:
                result = retrieval_metrics(emb, ident.tolist())
            except InvalidInputError:  # no polyp seen in two validation tracklets
                metrics.update(
                    val_map=float("nan"), val_hit_rate_1=float("nan"), val_hit_rate_5=float("nan")
                )
            else:
                metrics.update(
                    val_map=float(result.map),
                    val_hit_rate_1=float(result.hit_rate[1]),
                    val_hit_rate_5=float(result.hit_rate[5]),
                )
        self.last_eval = metrics
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name in ("val_map", "val_loss"))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
