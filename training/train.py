"""Train the tracklet encoder (SPEC §5) and keep the best checkpoint by validation mAP.

``train(load_train_config("demo", {"data_root": ..., "out_dir": ...}))`` writes
``out_dir/encoder.pt`` (:func:`model.encoder.save_encoder_checkpoint`, with the
re-identification threshold and training info in ``extra``), ``out_dir/history.json``
(evaluation before training as epoch −1, then one row per epoch), ``out_dir/last.ckpt``
(the full Lightning state after the last finished epoch, for ``resume=True``), CSV logs
(``out_dir/logs``) and TensorBoard logs (``out_dir/tensorboard``).

Multi-process (DDP) runs: ``strategy: ddp`` with ``devices`` / ``num_nodes``. Each
process trains on its own share of the bag batches and evaluates the whole validation
split; only global rank 0 writes files.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
import warnings
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

from polypindex.model.config import (
    FragmentConfig,
    PreprocessConfig,
    TrackletConfig,
    parse_overrides,
)
from polypindex.model.encoder import EncoderConfig, save_encoder_checkpoint
from polypindex.model.errors import ConfigError
from polypindex.model.evaluation import best_f1_threshold, pair_scores
from polypindex.training.datamodule import SAMPLER_KINDS, FragmentDataModule, embed_crops
from polypindex.training.module import LOSS_KINDS, HmveModule
from polypindex.training.msn_init import load_msn_into_hmve

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LAST_CHECKPOINT = "last.ckpt"
MONITORS = {"val_map": "max", "val_loss": "min"}
_NESTED = {
    "encoder": EncoderConfig,
    "preprocess": PreprocessConfig,
    "tracklet": TrackletConfig,
    "fragment": FragmentConfig,
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
        sampler: ``temporal_temperature`` | ``knn`` | ``identity``.
        loss: ``mil_nce`` | ``multi_positive`` | ``soft_multi_positive`` (targets over bag
            members weighted by exp(−Δt / ``soft_sigma``)).
        n_views: bag size (anchor + n_views − 1).
        batch_size: fragments per batch, a multiple of ``n_views``.
        lr, weight_decay: AdamW settings.
        epochs: training epochs (also the length of the temperature schedule).
        t_min, t_max: bag temperature at the first and the last epoch.
        seed: seeds Python, numpy, torch and the samplers.
        precision: Lightning precision (``32-true``, ``16-mixed``, ``bf16-mixed``).
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
        loss_temperature: τ of the contrastive losses.
        fragment_weight, frame_across_weight, frame_within_weight,
        ignore_same_fragment_pairs: MIL-NCE term settings.
        train_split, val_split: split names.
        max_val_loss_batches: cap on validation bag batches for the val loss
            (``None`` = all; the same fixed batches every epoch).
        soft_sigma: σ of ``soft_multi_positive``, in normalised video time (a video spans 1).
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
    n_views: int = 5
    batch_size: int = 60
    lr: float = 1e-5
    weight_decay: float = 1e-4
    epochs: int = 50
    t_min: float = 0.3
    t_max: float = 12.0
    seed: int = 0
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    max_steps_per_epoch: int | None = None
    accelerator: str = "auto"
    monitor: str = "val_map"
    num_workers: int = 0
    eval_batch_size: int = 32
    d_proj: int = 128
    loss_temperature: float = 0.07
    fragment_weight: float = 1.0
    frame_across_weight: float = 1.0
    frame_within_weight: float = 1.0
    ignore_same_fragment_pairs: bool = True
    train_split: str = "train"
    val_split: str = "val"
    max_val_loss_batches: int | None = None
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    soft_sigma: float = 0.05
    init_frame_encoder: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_KINDS:
            raise ConfigError(f"sampler must be one of {SAMPLER_KINDS}, got {self.sampler!r}")
        if self.loss not in LOSS_KINDS:
            raise ConfigError(f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
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
        if not self.soft_sigma > 0:
            raise ConfigError(f"soft_sigma must be > 0, got {self.soft_sigma}")

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_root) / ".crop_cache"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in _NESTED:
            out[key] = out[key].to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"TrainConfig: unknown field(s) {unknown}; known fields: {sorted(known)}"
            )
        kwargs = dict(data)
        for key, kind in _NESTED.items():
            value = kwargs.get(key)
            if isinstance(value, Mapping):
                kwargs[key] = kind.from_dict(dict(value))  # type: ignore[attr-defined]
        return cls(**kwargs)


def available_configs() -> list[str]:
    """Names of the presets in ``training/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; keys may be dotted (``encoder.d_model``)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type) and leaf in _NESTED:
            node[leaf] = value.to_dict()  # type: ignore[attr-defined]
        else:
            node[leaf] = copy.deepcopy(value) if isinstance(value, Mapping) else value
    return out


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
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no training config {str(name_or_path)!r}: not a file and not one of {available_configs()}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a mapping of fields")
    data.setdefault("name", path.stem)
    return TrainConfig.from_dict(_merge(data, overrides or {}))


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


class _LastCheckpoint(Callback):
    """Writes the full training state to ``path`` after every training epoch (after
    :class:`_History` has recorded it), atomically: a temporary file, then a rename."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


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
    """Raise a ConfigError unless ``checkpoint`` exists and holds this run's architecture."""
    if not checkpoint.is_file():
        raise ConfigError(
            f"cannot resume: no {checkpoint} (it is written after every finished epoch); "
            f"run without --resume to start from scratch"
        )
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
        n_views=config.n_views,
        batch_size=config.batch_size,
        max_epochs=config.epochs,
        t_min=config.t_min,
        t_max=config.t_max,
        seed=config.seed,
        eval_batch_size=config.eval_batch_size,
        num_workers=config.num_workers,
        train_split=config.train_split,
        val_split=config.val_split,
        max_val_loss_batches=config.max_val_loss_batches,
    )
    datamodule.setup("fit")
    return datamodule


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
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_checkpoint = out / LAST_CHECKPOINT
    if resume:
        _check_resumable(last_checkpoint, config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = make_datamodule(config)
    if config.monitor == "val_map" and len(set(datamodule.val_identities)) == len(
        datamodule.val_identities
    ):
        raise ConfigError(
            f"no polyp of split {config.val_split!r} appears in two tracklets, so validation mAP is "
            f"undefined: use a larger validation split or set monitor: val_loss"
        )
    module = HmveModule(
        config.encoder,
        loss=config.loss,
        lr=config.lr,
        weight_decay=config.weight_decay,
        d_proj=config.d_proj,
        loss_temperature=config.loss_temperature,
        fragment_weight=config.fragment_weight,
        frame_across_weight=config.frame_across_weight,
        frame_within_weight=config.frame_within_weight,
        ignore_same_fragment_pairs=config.ignore_same_fragment_pairs,
        soft_sigma=config.soft_sigma,
    )
    module.set_fragment_times(
        train=datamodule.train_fragments.index, val=datamodule.val_fragments.index
    )
    init_info: dict[str, Any] | None = None
    if config.init_frame_encoder and resume:  # the weights come from last.ckpt
        init_info = {"path": config.init_frame_encoder, "loaded_before_resume": True}
    elif config.init_frame_encoder:
        init_info = load_msn_into_hmve(module.encoder, config.init_frame_encoder, config.preprocess)
    history = _History(datamodule, config.monitor)
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,  # type: ignore[arg-type]
        accumulate_grad_batches=config.accumulate_grad_batches,
        limit_train_batches=config.max_steps_per_epoch,
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # last.ckpt is written by _LastCheckpoint
        enable_progress_bar=progress,
        enable_model_summary=progress,
        logger=[
            CSVLogger(str(out), name="logs"),
            TensorBoardLogger(str(out), name="tensorboard", default_hp_metric=False),
        ],
        callbacks=[history, _LastCheckpoint(last_checkpoint), *callbacks],
        deterministic="warn",
        log_every_n_steps=1,
        # the bag samplers shard their batches across processes themselves
        use_distributed_sampler=False,
    )
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
        [
            c[f // config.fragment.stride]
            for c, f in zip(datamodule.val_crops, datamodule.val_eval_frames, strict=True)
        ],
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
    }
    if init_info is not None:
        extra["init_frame_encoder"] = init_info
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m polypindex.training.train demo --data var/data/synth --out var/train/demo --set epochs=3``."""
    parser = argparse.ArgumentParser(description="Train the HMVE tracklet encoder.")
    parser.add_argument("config", help=f"preset ({', '.join(available_configs())}) or YAML path")
    parser.add_argument("--data", help="dataset folder (overrides data_root)")
    parser.add_argument("--out", help="output folder (overrides out_dir)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/last.ckpt (same config)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field (JSON value)",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.data:
        overrides["data_root"] = args.data
    if args.out:
        overrides["out_dir"] = args.out
    result = train(load_train_config(args.config, overrides), resume=args.resume)
    print(
        json.dumps(
            {
                "best_checkpoint": str(result.best_checkpoint),
                "best_epoch": result.best_epoch,
                "initial_val_map": result.initial_val_map,
                "best_val_map": result.best_val_map,
                "seconds_per_epoch": result.seconds_per_epoch,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
