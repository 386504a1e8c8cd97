"""Lightning pieces shared by the training runs (the HMVE run of :mod:`training.train`
and the MSN pretraining of :mod:`training.msn`): the trainer assembly (with the machine's
precision and memory format, :mod:`training.precision`), the start of a run (its output
folder, ``last.ckpt`` and seeds), the per-epoch ``last.ckpt`` and the per-step loss
logging. Their command line is ``polypindex train`` / ``pretrain-frames``
(:mod:`polypindex.cli.train`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor

from polypindex.model.core.errors import ConfigError
from polypindex.model.core.files import atomic_path
from polypindex.training.precision import (
    AUTO,
    ChannelsLast,
    resolve_channels_last,
    resolve_precision,
)

if TYPE_CHECKING:
    from polypindex.training.msn_config import MsnConfig
    from polypindex.training.train_config import TrainConfig

LAST_CHECKPOINT = "last.ckpt"


def start_run(config: TrainConfig | MsnConfig, resume: bool) -> tuple[Path, Path]:
    """Create the run's ``out_dir`` and seed everything (Python, numpy, torch, workers).

    Returns:
        ``(out_dir, out_dir / last.ckpt)``.

    Raises:
        ConfigError: ``resume`` without a ``last.ckpt``.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise ConfigError(
            f"cannot resume: no {last} (it is written after every finished epoch); "
            f"run without --resume to start from scratch"
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    return out, last


def make_trainer(
    config: TrainConfig | MsnConfig,
    out: Path,
    callbacks: Sequence[Callback],
    progress: bool = True,
    **options: Any,
) -> L.Trainer:
    """A Lightning trainer for ``config``: CSV logs in ``out/logs``, TensorBoard logs in
    ``out/tensorboard``, no Lightning checkpointing (the runs write their own files),
    one log row per step, the precision and memory format of :func:`numerics`;
    ``options`` are further ``L.Trainer`` arguments."""
    precision, channels_last = numerics(config)
    extra: list[Callback] = [ChannelsLast()] if channels_last else []
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=precision,  # type: ignore[arg-type]
        limit_train_batches=config.max_steps_per_epoch,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        logger=[
            CSVLogger(str(out), name="logs"),
            TensorBoardLogger(str(out), name="tensorboard", default_hp_metric=False),
        ],
        callbacks=[*extra, *callbacks],
        log_every_n_steps=1,
        **options,
    )


def numerics(config: TrainConfig | MsnConfig) -> tuple[str, bool]:
    """``(Lightning precision, channels-last weights)`` of a run: ``precision: auto`` and
    ``channels_last: auto`` resolved for this machine (:mod:`training.precision`; a config
    without a ``channels_last`` field counts as ``auto``)."""
    precision = resolve_precision(config.precision, config.accelerator)
    return precision, resolve_channels_last(getattr(config, "channels_last", AUTO), precision)


def uses_channels_last(trainer: L.Trainer) -> bool:
    """Whether :func:`make_trainer` gave ``trainer`` channels-last weights."""
    return any(isinstance(cb, ChannelsLast) for cb in trainer.callbacks)  # type: ignore[attr-defined]


class LastCheckpoint(Callback):
    """Writes the full training state to ``path`` after every training epoch (after the
    callbacks before it have recorded the epoch), atomically
    (:func:`model.core.files.atomic_path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # collective: every rank calls save_checkpoint, only global rank 0 writes a file
        if trainer.is_global_zero:
            with atomic_path(self.path) as tmp:
                trainer.save_checkpoint(tmp)
        else:
            trainer.save_checkpoint(self.path)


def log_train_step(
    module: L.LightningModule, loss: Tensor, terms: dict[str, Tensor], batch_size: int
) -> None:
    """Log ``train_loss`` (per step and epoch) and each ``train_{term}`` (per epoch).

    ``sync_dist``: under DDP the epoch means are over every process's batches.
    """
    module.log(
        "train_loss",
        loss,
        on_step=True,
        on_epoch=True,
        prog_bar=True,
        batch_size=batch_size,
        sync_dist=True,
    )
    for name, value in terms.items():
        module.log(
            f"train_{name}",
            value,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
