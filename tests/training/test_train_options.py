"""Training options: resume from last.ckpt, TensorBoard logs, DDP fields and sharding,
the baseline presets, and clear errors when the data cannot form batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.encoder import load_encoder_checkpoint
from polypindex.training.samplers import FragmentIndex, KNearestBagSampler
from polypindex.training.train import train
from polypindex.training.train_config import TrainConfig, load_train_config
from polypindex.training.trainer import LAST_CHECKPOINT

ROOT = Path(__file__).resolve().parents[2]


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "data_root": str(data),
        "out_dir": str(out),
        "cache_dir": str(out.parent / "crops"),
        "epochs": 2,
    }
    return load_train_config("test_tiny", base | overrides)


class _StopAfterFirstEpoch(L.Callback):
    """Simulates an interrupted run: stop after epoch 0 (last.ckpt is written first)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def test_resume_continues_the_epoch_count(disc_data: Path, tmp_path: Path) -> None:
    straight = train(_config(disc_data, tmp_path / "straight"), progress=False)

    config = _config(disc_data, tmp_path / "run")
    first = train(config, progress=False, callbacks=[_StopAfterFirstEpoch()])
    assert [r["epoch"] for r in first.history] == [-1, 0]
    assert (tmp_path / "run" / LAST_CHECKPOINT).is_file()

    resumed = train(config, progress=False, resume=True)
    assert [r["epoch"] for r in resumed.history] == [-1, 0, 1]
    assert [r["temperature"] for r in resumed.history] == [None, 0.3, 12.0]
    # epoch 0 comes from the checkpoint, epoch 1 continues the same optimisation
    for got, want in zip(resumed.history, straight.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4, nan_ok=True)
        assert got["val_map"] == pytest.approx(want["val_map"], rel=1e-4)
    extra = load_encoder_checkpoint(resumed.best_checkpoint).extra
    assert extra["epochs_trained"] == 2 and extra["resumed"] is True
    saved = json.loads(resumed.history_path.read_text())["history"]
    assert [r["epoch"] for r in saved] == [-1, 0, 1]
    # a finished run resumed again trains nothing more
    again = train(config, progress=False, resume=True)
    assert [r["epoch"] for r in again.history] == [-1, 0, 1]


def test_logs_csv_and_tensorboard_with_the_soft_loss(disc_data: Path, tmp_path: Path) -> None:
    config = _config(
        disc_data, tmp_path / "run", epochs=1, sampler="knn", loss="soft_multi_positive"
    )
    result = train(config, progress=False)
    assert np.isfinite(result.history[1]["train_loss"])
    assert np.isfinite(result.history[1]["val_loss"])
    csv = tmp_path / "run" / "logs" / "version_0" / "metrics.csv"
    assert "train_loss_epoch" in csv.read_text().splitlines()[0]
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_errors(disc_data: Path, tmp_path: Path) -> None:
    config = _config(disc_data, tmp_path / "run", epochs=1)
    with pytest.raises(ConfigError, match=r"no .*last\.ckpt.*without --resume"):
        train(config, progress=False, resume=True)
    train(config, progress=False)
    other = _config(disc_data, tmp_path / "run", epochs=1, **{"encoder.d_model": 64})
    with pytest.raises(ConfigError, match=r"cannot resume.*trained with encoder"):
        train(other, progress=False, resume=True)


def test_ddp_two_cpu_processes(disc_data: Path, tmp_path: Path) -> None:
    """strategy ddp, 2 CPU processes (gloo): one epoch, rank 0 writes the checkpoints."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "polypindex.cli", "train", "--config", "test_tiny"]
    cmd += ["--data", str(disc_data), "--out", str(out), "--set", f"cache_dir={tmp_path / 'crops'}"]
    cmd += ["--set", "strategy=ddp", "--set", "devices=2", "--set", "accelerator=cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / LAST_CHECKPOINT).is_file()
    loaded = load_encoder_checkpoint(out / "encoder.pt")
    assert loaded.extra["world_size"] == 2 and loaded.extra["epochs_trained"] == 1
    state = torch.load(out / LAST_CHECKPOINT, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"devices": 0}, "devices must be"),
        ({"devices": "two"}, "devices must be"),
        ({"num_nodes": 0}, "num_nodes must be"),
        ({"strategy": ""}, "strategy must be"),
        ({"soft_sigma": 0.0}, "soft_sigma must be > 0"),
        ({"loss": "soft"}, "loss must be one of"),
    ],
)
def test_option_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config("test_tiny", overrides)


def test_ddp_fields_round_trip() -> None:
    c = load_train_config("test_tiny", {"strategy": "ddp", "devices": 2, "num_nodes": 1})
    assert (c.strategy, c.devices, c.num_nodes) == ("ddp", 2, 1)
    assert TrainConfig.from_dict(c.to_dict()) == c


def _index(n: int) -> FragmentIndex:
    return FragmentIndex(
        video=np.array(["v"] * n, dtype=object),
        position=np.linspace(0, 1, n),
        tracklet=np.zeros(n, dtype=np.int64),
    )


@pytest.mark.parametrize(
    ("n_fragments", "batch_size", "replicas", "per_rank"),
    [(20, 4, 2, 5), (22, 4, 2, 5), (20, 4, 3, 3), (12, 12, 2, 1), (12, 12, 1, 2)],
)
def test_batches_are_sharded_across_processes(
    n_fragments: int, batch_size: int, replicas: int, per_rank: int
) -> None:
    full = KNearestBagSampler(_index(n_fragments), n_views=2, batch_size=batch_size).batches()
    shards = []
    for rank in range(replicas):
        sampler = KNearestBagSampler(_index(n_fragments), n_views=2, batch_size=batch_size)
        sampler.set_distributed(replicas, rank)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == per_rank
    interleaved = [shards[i % replicas][i // replicas] for i in range(per_rank * replicas)]
    assert interleaved == full[: per_rank * replicas]


def test_too_few_batches_for_the_processes() -> None:
    sampler = KNearestBagSampler(_index(6), n_views=2, batch_size=12)
    with pytest.raises(ConfigError, match=r"only 1 batch\(es\).*2 processes.*lower batch_size"):
        sampler.set_distributed(2, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_views": 13, "batch_size": 26}, r"fragment\(s\) but a bag needs n_views=13"),
        ({"fragment.fragment_length": 40}, "no training fragment.*lower them"),
    ],
)
def test_data_that_cannot_form_batches(
    disc_data: Path, tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(_config(disc_data, tmp_path / "run", **overrides), progress=False)


@pytest.mark.parametrize(
    ("name", "sampler", "loss"),
    [
        ("knn_multipositive", "knn", "multi_positive"),
        ("msn_init", "temporal_temperature", "mil_nce"),
    ],
)
def test_baseline_presets(name: str, sampler: str, loss: str) -> None:
    c = load_train_config(name)
    assert (c.name, c.sampler, c.loss) == (name, sampler, loss)
    demo = load_train_config("demo")
    assert (c.encoder, c.preprocess, c.fragment, c.batch_size) == (
        demo.encoder,
        demo.preprocess,
        demo.fragment,
        demo.batch_size,
    )
    assert (c.init_frame_encoder is not None) == (name == "msn_init")


def test_mixed_precision_and_gradient_accumulation_train_on_cpu(
    disc_data: Path, tmp_path: Path
) -> None:
    """bf16 autocast (the CPU's mixed precision) with 2 accumulated batches per step."""
    config = _config(
        disc_data, tmp_path / "run", epochs=1, precision="bf16-mixed", accumulate_grad_batches=2
    )
    result = train(config, progress=False)
    assert np.isfinite(result.history[1]["train_loss"])
    assert 0.0 <= result.history[1]["val_map"] <= 1.0
    checkpoint = load_encoder_checkpoint(result.best_checkpoint)
    # the saved weights stay float32 whatever the training precision
    assert all(
        t.dtype == torch.float32
        for t in checkpoint.encoder.state_dict().values()
        if t.is_floating_point()
    )
