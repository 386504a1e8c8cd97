"""The default demo model's recipe (docs/training.md#the-default-demo-model): its presets
validate and agree with each other, and ``polypindex demo``'s two stages (MSN frame
pretraining, then the method from those frames) run, record the initialisation and are
skipped or resumed as the files say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from polypindex.demo import (
    DEMO_MSN_CONFIG,
    DEMO_TRAIN_CONFIG,
    ensure_frame_pretraining,
    ensure_model,
)
from polypindex.model.core.layout import Layout
from polypindex.model.nets.encoder import load_encoder_checkpoint, load_frame_encoder_checkpoint
from polypindex.training.msn_config import load_msn_config
from polypindex.training.presets import CONFIG_DIR
from polypindex.training.train_config import load_train_config


def test_demo_presets_load_and_agree() -> None:
    model = load_train_config(DEMO_TRAIN_CONFIG)
    msn = load_msn_config(DEMO_MSN_CONFIG)
    method = load_train_config("demo")
    assert model.init_frame_encoder == str(Path(msn.out_dir) / "msn.pt")
    assert msn.backbone == model.encoder.backbone == "resnet18"
    assert msn.preprocess == model.preprocess == method.preprocess
    assert msn.fragment.stride == model.fragment.stride  # one crop cache for both stages
    assert msn.cache_dir == model.cache_dir
    assert msn.splits == (model.train_split,)  # never the val / test frames
    # the method's settings; only the initialisation and the budget differ
    same = ("encoder", "fragment", "sampler", "loss", "n_views", "batch_size", "lr", "seed")
    assert all(getattr(model, f) == getattr(method, f) for f in same)
    assert model.epochs * model.max_steps_per_epoch > method.epochs * method.max_steps_per_epoch
    assert (msn.epochs, msn.max_steps_per_epoch) == (4, 25)
    assert model.precision == msn.precision == method.precision == "auto"


def _tiny_presets(tmp_path: Path) -> tuple[Path, Path]:
    """test_tiny / msn_test_tiny as files, the training one with an init_frame_encoder."""
    train = yaml.safe_load((CONFIG_DIR / "test_tiny.yaml").read_text())
    train["init_frame_encoder"] = "set-by-the-demo"
    msn = yaml.safe_load((CONFIG_DIR / "msn_test_tiny.yaml").read_text())
    msn["tiny_width"] = train["encoder"]["tiny_width"]
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    (tmp_path / "msn.yaml").write_text(yaml.safe_dump(msn))
    return tmp_path / "train.yaml", tmp_path / "msn.yaml"


def test_demo_stages_run_and_are_reused(
    disc_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_preset, msn_preset = _tiny_presets(tmp_path)
    lay = Layout(home=tmp_path / "home")
    onnx_path = ensure_model(lay, disc_data, train_preset, msn_preset)
    assert onnx_path == lay.demo_model_dir / "encoder.onnx" and onnx_path.is_file()
    msn_path = lay.demo_model_dir / "msn" / "msn.pt"
    loaded = load_encoder_checkpoint(lay.demo_model_dir / "encoder.pt")
    init = loaded.extra["init_frame_encoder"]
    assert init["path"] == str(msn_path)
    assert init["version"] == load_frame_encoder_checkpoint(msn_path).version
    assert loaded.extra["precision"] in ("32-true", "bf16-mixed")
    capsys.readouterr()
    # everything present: nothing is trained again
    assert ensure_model(lay, disc_data, train_preset, msn_preset) == onnx_path
    assert "model present" in capsys.readouterr().out
    assert ensure_frame_pretraining(lay, disc_data, msn_preset) == msn_path
    assert "frame pretraining present" in capsys.readouterr().out


def test_unfinished_frame_pretraining_is_resumed(disc_data: Path, tmp_path: Path) -> None:
    _, msn_preset = _tiny_presets(tmp_path)
    data = yaml.safe_load(msn_preset.read_text())
    data["epochs"] = 2
    msn_preset.write_text(yaml.safe_dump(data))
    lay = Layout(home=tmp_path / "home")
    from polypindex.training.msn import pretrain_frames
    from polypindex.training.msn_config import load_msn_config

    out = lay.demo_model_dir / "msn"
    first = load_msn_config(
        msn_preset,
        {"data_root": str(disc_data), "out_dir": str(out)}
        | {"epochs": 1, "cache_dir": str(lay.crop_cache)},
    )
    pretrain_frames(first, progress=False)  # as if the demo had stopped after epoch 1 of 2
    assert load_frame_encoder_checkpoint(out / "msn.pt").extra["epoch"] == 1
    path = ensure_frame_pretraining(lay, disc_data, msn_preset)
    assert load_frame_encoder_checkpoint(path).extra["epoch"] == 2
