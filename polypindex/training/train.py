"""Train the tracklet encoder (docs/method.md#training) and keep the best checkpoint by
validation mAP.

``train(load_train_config("demo", {"data_root": ..., "out_dir": ...}))`` writes
``out_dir/encoder.pt`` (:func:`model.nets.encoder.save_encoder_checkpoint`, with the
re-identification threshold and training info in ``extra``), ``out_dir/history.json``
(evaluation before training as epoch −1, then one row per epoch), ``out_dir/last.ckpt``
(the full Lightning state after the last finished epoch, for ``resume=True``), CSV logs
(``out_dir/logs``) and TensorBoard logs (``out_dir/tensorboard``).

Multi-process (DDP) runs: ``strategy: ddp`` with ``devices`` / ``num_nodes``. Each
process trains on its own share of the bag batches and evaluates the whole validation
split; only global rank 0 writes files.

The run's settings are :class:`training.train_config.TrainConfig` (re-exported here);
the Lightning assembly shared with MSN pretraining is :mod:`training.trainer`.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.scoring.calibration import CALIBRATION_KEY, fit_tracklet_calibration
from polypindex.model.scoring.evaluation import best_f1_threshold, pair_scores
from polypindex.training.datamodule import FragmentDataModule, embed_crops
from polypindex.training.module import HmveModule
from polypindex.training.msn_init import load_msn_into_hmve
from polypindex.training.samplers import SamplerSettings
from polypindex.training.train_config import (
    MONITORS,
    TrainConfig,
)
from polypindex.training.trainer import (
    LastCheckpoint,
    make_trainer,
    start_run,
    uses_channels_last,
)

__all__ = ["TrainResult", "make_datamodule", "make_module", "reid_threshold", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        best_checkpoint: ``out_dir/encoder.pt`` (the best epoch's encoder).
        history_path: ``out_dir/history.json``.
        history: per-epoch rows ``{epoch, train_loss, val_loss, val_map, val_hit_rate_1,
            val_hit_rate_5, temperature, seconds}``; epoch −1 is the untrained encoder.
        best_epoch: the epoch whose weights were saved (−1 = untrained was best).
        best_val_map: validation mAP of the saved encoder.
        initial_val_map: validation mAP before training.
        final_val_map: validation mAP after the last epoch.
        seconds_per_epoch: mean wall time of a training epoch (with its validation).
        reid_threshold: best-F1 threshold on sigmoid(cosine) over validation pairs.
        reid_f1: the F1 at that threshold.
    """

    best_checkpoint: Path
    history_path: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_map: float
    initial_val_map: float
    final_val_map: float
    seconds_per_epoch: float
    reid_threshold: float
    reid_f1: float


class _History(Callback):
    """Sets the bag sampler's epoch, records one history row per epoch and keeps the
    best encoder weights in memory."""

    def __init__(self, datamodule: FragmentDataModule, monitor: str) -> None:
        self.datamodule = datamodule
        self.monitor = monitor
        self.mode = MONITORS[monitor]
        self.rows: list[dict[str, Any]] = []
        self.best_value = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = -2
        self.best_state: dict[str, torch.Tensor] | None = None
        self._start = 0.0

    def record(self, module: HmveModule, epoch: int, seconds: float) -> None:
        ev = module.last_eval
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": module.epoch_train_loss if epoch >= 0 else float("nan"),
            "val_loss": ev.get("val_loss", float("nan")),
            "val_map": ev.get("val_map", float("nan")),
            "val_hit_rate_1": ev.get("val_hit_rate_1", float("nan")),
            "val_hit_rate_5": ev.get("val_hit_rate_5", float("nan")),
            "temperature": self.datamodule.temperature(self.datamodule.train_sampler.epoch)
            if epoch >= 0
            else None,
            "seconds": seconds,
        }
        self.rows.append(row)
        value = float(row[self.monitor])
        # ties go to the later epoch
        better = value >= self.best_value if self.mode == "max" else value <= self.best_value
        if self.best_state is None or (not math.isnan(value) and better):
            if not math.isnan(value):
                self.best_value = value
            self.best_epoch = epoch
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in module.encoder.state_dict().items()
            }

    def state_dict(self) -> dict[str, Any]:
        """Saved in ``last.ckpt`` so a resumed run keeps its history and best weights."""
        return {
            "rows": copy.deepcopy(self.rows),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self.best_value = float(state_dict["best_value"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.best_state = state_dict["best_state"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed from a checkpoint written at an epoch's end starts the next epoch
        # without calling on_train_epoch_start: set the epoch (bags) and clock here too.
        self.datamodule.train_sampler.set_epoch(trainer.current_epoch)
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own set_epoch reaches a DataLoader's sampler, not its batch_sampler;
        # the loader's iterator (hence this epoch's bags) is created after this hook.
        self.datamodule.train_sampler.set_epoch(trainer.current_epoch)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, HmveModule)
        self.record(pl_module, trainer.current_epoch, time.perf_counter() - self._start)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reid_threshold(embeddings: np.ndarray, identities: Sequence[Any]) -> tuple[float, float]:
    """Best-F1 threshold on sigmoid(cosine) over all unordered pairs of tracklets.

    Args:
        embeddings: (N, D) tracklet embeddings.
        identities: N identity labels (positive pair = same identity).

    Returns:
        ``(threshold, f1)``; ``(0.5, nan)`` when no two tracklets share an identity.
    """
    scores, same = pair_scores(embeddings, list(identities))
    if not same.any():
        warnings.warn(
            "no two validation tracklets share an identity: reid_threshold defaults to 0.5",
            stacklevel=2,
        )
        return 0.5, float("nan")
    threshold, f1 = best_f1_threshold(scores, same.astype(np.int64))
    return float(threshold), float(f1)


def _check_resumable(checkpoint: Path, config: TrainConfig) -> None:
    """Raise a ConfigError unless ``checkpoint`` holds this run's architecture."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"cannot resume: {checkpoint} is unreadable: {exc}") from exc
    saved = (state.get("hyper_parameters") or {}).get("encoder_config")
    if saved is not None and saved != config.encoder.to_dict():
        raise ConfigError(
            f"cannot resume from {checkpoint}: it was trained with encoder {saved}, "
            f"the config asks for {config.encoder.to_dict()}; use another out_dir or drop --resume"
        )


def make_datamodule(config: TrainConfig) -> FragmentDataModule:
    """The run's fragment data module, set up for fitting (crops loaded, samplers built)."""
    datamodule = FragmentDataModule(
        data_root=config.data_root,
        cache_dir=config.resolved_cache_dir,
        preprocess=config.preprocess,
        tracklet=config.tracklet,
        fragment=config.fragment,
        sampler=config.sampler,
        bags=SamplerSettings(
            n_views=config.n_views,
            batch_size=config.batch_size,
            seed=config.seed,
            max_epochs=config.epochs,
            t_min=config.t_min,
            t_max=config.t_max,
            t_schedule=config.t_schedule,
        ),
        eval_batch_size=config.eval_batch_size,
        num_workers=config.num_workers,
        train_split=config.train_split,
        val_split=config.val_split,
        max_val_loss_batches=config.max_val_loss_batches,
    )
    datamodule.setup("fit")
    return datamodule


def make_module(config: TrainConfig) -> HmveModule:
    """The run's LightningModule (encoder, projector and the configured loss)."""
    return HmveModule(
        config.encoder,
        loss=config.loss,
        lr=config.lr,
        weight_decay=config.weight_decay,
        d_proj=config.d_proj,
        loss_params=config.loss_params,
    )


def train(
    config: TrainConfig,
    progress: bool = True,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fit the encoder, evaluating before training and after every epoch.

    Args:
        config: the run.
        progress: show Lightning's progress bar and model summary.
        resume: continue from ``out_dir/last.ckpt`` (weights, optimiser, epoch count,
            history and best weights so far) up to ``config.epochs`` epochs in all.
        callbacks: extra Lightning callbacks (run after the built-in ones).

    Returns:
        A :class:`TrainResult`; the files are in ``config.out_dir``.

    Raises:
        ConfigError: invalid data for the settings (too few fragments, ...), or
            ``resume`` without a compatible ``last.ckpt``.
    """
    out, last_checkpoint = start_run(config, resume)
    if resume:
        _check_resumable(last_checkpoint, config)
    datamodule = make_datamodule(config)
    if config.monitor == "val_map" and len(set(datamodule.val_identities)) == len(
        datamodule.val_identities
    ):
        raise ConfigError(
            f"no polyp of split {config.val_split!r} appears in two tracklets, so validation mAP is "
            f"undefined: use a larger validation split or set monitor: val_loss"
        )
    module = make_module(config)
    module.set_fragment_times(
        train=datamodule.train_fragments.index, val=datamodule.val_fragments.index
    )
    init_info: dict[str, Any] | None = None
    if config.init_frame_encoder and resume:  # the weights come from last.ckpt
        init_info = {"path": config.init_frame_encoder, "loaded_before_resume": True}
    elif config.init_frame_encoder:
        init_info = load_msn_into_hmve(module.encoder, config.init_frame_encoder, config.preprocess)
    history = _History(datamodule, config.monitor)
    trainer = make_trainer(
        config,
        out,
        [history, LastCheckpoint(last_checkpoint), *callbacks],
        progress,
        accumulate_grad_batches=config.accumulate_grad_batches,
        num_sanity_val_steps=0,
        deterministic="warn",
        # the bag samplers shard their batches across processes themselves
        use_distributed_sampler=False,
    )
    precision, channels_last = str(trainer.precision), uses_channels_last(trainer)
    start = time.perf_counter()
    if resume:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last_checkpoint))
    else:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        history.record(module, -1, time.perf_counter() - start)
        trainer.fit(module, datamodule=datamodule)

    assert history.best_state is not None
    final_state = {k: v.detach().cpu().clone() for k, v in module.encoder.state_dict().items()}
    module.encoder.load_state_dict(history.best_state)
    use_gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if use_gpu else "cpu")
    module.encoder.to(device)
    embeddings = embed_crops(
        module.encoder,
        datamodule.val_eval_crops,
        config.preprocess,
        batch_size=config.eval_batch_size,
        device=device,
    )
    module.encoder.to("cpu")
    threshold, f1 = reid_threshold(embeddings, datamodule.val_identities)
    rows = history.rows
    best_row = next(r for r in rows if r["epoch"] == history.best_epoch)
    trained = [r for r in rows if r["epoch"] >= 0]
    seconds_per_epoch = float(np.mean([r["seconds"] for r in trained])) if trained else float("nan")
    extra = {
        "reid_threshold": threshold,
        "reid_f1": f1,
        "config_name": config.name,
        "epochs": config.epochs,
        "epochs_trained": len(trained),
        "best_epoch": history.best_epoch,
        "best_val_map": best_row["val_map"],
        "initial_val_map": rows[0]["val_map"],
        "monitor": config.monitor,
        "sampler": config.sampler,
        "loss": config.loss,
        "seed": config.seed,
        "seconds_per_epoch": seconds_per_epoch,
        "train_config": config.to_dict(),
        "resumed": resume,
        "world_size": trainer.world_size,
        "precision": precision,
        "channels_last": channels_last,
    }
    if init_info is not None:
        extra["init_frame_encoder"] = init_info
    # by context, on held-out halves of the validation procedures (docs/grouping.md#calibration)
    extra[CALIBRATION_KEY] = fit_tracklet_calibration(
        embeddings, datamodule.val_tracklets
    ).to_dict()
    checkpoint = out / "encoder.pt"
    history_path = out / "history.json"
    if not trainer.is_global_zero:  # DDP: only rank 0 writes
        module.encoder.load_state_dict(final_state)
        return _result(checkpoint, history_path, history, threshold, f1, seconds_per_epoch)
    save_encoder_checkpoint(
        checkpoint, module.encoder, config.encoder, config.preprocess, config.fragment, extra
    )
    module.encoder.load_state_dict(final_state)
    payload = {
        "config": config.to_dict(),
        "best_epoch": history.best_epoch,
        "monitor": config.monitor,
        "reid_threshold": threshold,
        "reid_f1": f1,
        "seconds_per_epoch": seconds_per_epoch,
        "precision": precision,
        "channels_last": channels_last,
        "history": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
    }
    history_path.write_text(json.dumps(payload, indent=2, default=str))
    return _result(checkpoint, history_path, history, threshold, f1, seconds_per_epoch)


def _result(
    checkpoint: Path,
    history_path: Path,
    history: _History,
    threshold: float,
    f1: float,
    seconds_per_epoch: float,
) -> TrainResult:
    rows = history.rows
    best_row = next(r for r in rows if r["epoch"] == history.best_epoch)
    return TrainResult(
        best_checkpoint=checkpoint,
        history_path=history_path,
        history=rows,
        best_epoch=history.best_epoch,
        best_val_map=float(best_row["val_map"]),
        initial_val_map=float(rows[0]["val_map"]),
        final_val_map=float(rows[-1]["val_map"]),
        seconds_per_epoch=seconds_per_epoch,
        reid_threshold=threshold,
        reid_f1=f1,
    )
