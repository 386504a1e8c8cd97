"""Training configs and an end-to-end one-epoch CPU fit on a tiny synthetic dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.synth import small_synth

pytest.importorskip("polypindex.model.nets.encoder")
pytest.importorskip("polypindex.model.scoring.evaluation")

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.encoder import load_encoder_checkpoint
from polypindex.model.scoring.calibration import Calibration
from polypindex.training.train import reid_threshold, train
from polypindex.training.train_config import TrainConfig, available_configs, load_train_config


@pytest.mark.parametrize(
    ("name", "backbone", "im_size", "sampler", "loss"),
    [
        ("demo", "resnet18", 64, "temporal_temperature", "mil_nce"),
        ("paper", "resnet50", 232, "temporal_temperature", "mil_nce"),
        ("supervised", "resnet18", 64, "identity", "multi_positive"),
        ("test_tiny", "tiny", 32, "temporal_temperature", "mil_nce"),
    ],
)
def test_presets_load(name: str, backbone: str, im_size: int, sampler: str, loss: str) -> None:
    config = load_train_config(name)
    assert config.name == name
    assert config.encoder.backbone == backbone
    assert config.preprocess.im_size == im_size
    assert (config.sampler, config.loss) == (sampler, loss)
    assert config.batch_size % config.n_views == 0


def test_paper_preset_matches_spec() -> None:
    c = load_train_config("paper")
    assert (c.batch_size, c.n_views, c.lr, c.weight_decay, c.epochs) == (60, 5, 1e-5, 1e-4, 50)
    assert (c.t_min, c.t_max, c.fragment.stride, c.fragment.fragment_length) == (0.3, 12.0, 4, 8)
    assert c.encoder.d_model == 256 and c.d_proj == 128 and c.loss_params.temperature == 0.07


def test_overrides_flat_dotted_and_nested() -> None:
    c = load_train_config(
        "demo",
        {
            "epochs": 2,
            "encoder.d_model": 64,
            "encoder.n_heads": 4,
            "preprocess": {"im_size": 48},
            "out_dir": "x",
        },
    )
    assert (c.epochs, c.encoder.d_model, c.encoder.n_heads, c.preprocess.im_size, c.out_dir) == (
        2,
        64,
        4,
        48,
        "x",
    )
    assert c.encoder.backbone == "resnet18"  # untouched nested fields survive
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("nope", {}, r"no training config 'nope'.*demo"),
        ("demo", {"learning_rate": 1.0}, r"unknown field\(s\) \['learning_rate'\]"),
        ("demo", {"batch_size": 62}, "multiple of n_views"),
        ("demo", {"sampler": "random"}, "sampler must be one of"),
        ("demo", {"fragment.fragment_length": -1}, "fragment_length must be > 0"),
        ("demo", {"encoder.n_heads": 7}, "divisible by n_heads"),
    ],
)
def test_config_errors(name: str, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(name, overrides)


def test_available_configs() -> None:
    assert {"demo", "paper", "supervised", "test_tiny"} <= set(available_configs())


def test_reid_threshold_separates_pairs() -> None:
    emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    threshold, f1 = reid_threshold(emb, ["a", "a", "b", "b"])
    assert f1 == pytest.approx(1.0)
    # positives at cos ≈ 0.995, negatives at cos <= ~0.2: the threshold lies between
    assert 1 / (1 + np.exp(-0.2)) < threshold <= 1 / (1 + np.exp(-0.996))
    with pytest.warns(UserWarning, match="share an identity"):
        assert reid_threshold(emb, ["a", "b", "c", "d"])[0] == 0.5


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    synth = pytest.importorskip("polypindex.synth")
    root = tmp_path_factory.mktemp("synth_tiny")
    config = small_synth(procedures=4, frames=400, size=(96, 80), tracklet_length=(30, 50))
    synth.generate(root, config, progress=False)
    return root


def test_one_epoch_fit_end_to_end(
    synth_dataset: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    config = tiny_config(synth_dataset)
    result = train(config, progress=False)
    assert result.best_checkpoint == tmp_path / "run" / "encoder.pt"
    assert result.best_checkpoint.is_file() and result.history_path.is_file()
    history = json.loads(result.history_path.read_text())["history"]
    assert [row["epoch"] for row in history] == [-1, 0]
    assert np.isfinite(history[1]["train_loss"])
    assert 0.0 <= history[0]["val_map"] <= 1.0 and 0.0 <= history[1]["val_map"] <= 1.0
    assert history[1]["temperature"] == pytest.approx(config.t_min)
    loaded = load_encoder_checkpoint(result.best_checkpoint)
    assert loaded.encoder_config == config.encoder
    assert loaded.preprocess == config.preprocess
    assert 0.0 < loaded.extra["reid_threshold"] < 1.0
    # the calibrated same-polyp probability, fitted on the validation pairs (docs/grouping.md)
    calibration = Calibration.from_dict(loaded.extra["reid_calibration"])
    assert calibration.metrics["n_pairs"] > 0 and not calibration.legacy
    assert set(calibration.contexts) == {"within", "within_cosine", "cross"}
    assert loaded.extra["config_name"] == "test_tiny"
    assert loaded.extra["best_epoch"] == result.best_epoch in (-1, 0)
    x = torch.zeros(2, 3, 3, 32, 32)
    assert loaded.encoder.embed(x).shape == (2, config.encoder.d_model)


@pytest.mark.parametrize(
    ("sampler", "loss"), [("temporal_temperature", "mil_nce"), ("identity", "multi_positive")]
)
def test_two_epoch_fit_follows_the_schedule(
    disc_data: Path, sampler: str, loss: str, tiny_config: Callable[..., TrainConfig]
) -> None:
    config = tiny_config(disc_data, {"epochs": 2, "sampler": sampler, "loss": loss})
    result = train(config, progress=False)
    temps = [row["temperature"] for row in result.history]
    assert temps == ([None, 0.3, 12.0] if sampler == "temporal_temperature" else [None, None, None])
    assert all(np.isfinite(row["train_loss"]) for row in result.history[1:])
    maps = [row["val_map"] for row in result.history]
    assert result.best_val_map == max(maps)
    assert result.initial_val_map == maps[0] and result.final_val_map == maps[-1]
    assert load_encoder_checkpoint(result.best_checkpoint).extra["best_epoch"] == result.best_epoch
