"""HMVE shapes, backbone-weight loading, versions and the checkpoint format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers.tiny_models import TINY

from polypindex.model.core.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.nets.encoder import (
    CHECKPOINT_FORMAT,
    encoder_version,
    frame_encoder_version,
    load_encoder_checkpoint,
    load_frame_encoder_checkpoint,
    save_encoder_checkpoint,
    save_frame_encoder_checkpoint,
)
from polypindex.model.nets.hmve import HMVE, EncoderConfig, build_backbone, load_backbone_weights

IM = 32


def _frames(b: int, s: int, seed: int = 0, size: int = IM) -> torch.Tensor:
    return torch.randn(b, s, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> HMVE:
    torch.manual_seed(0)
    return HMVE(TINY).eval()


@pytest.mark.parametrize(("b", "s"), [(1, 1), (1, 4), (2, 3), (3, 7)])
def test_output_shapes(tiny: HMVE, b: int, s: int) -> None:
    with torch.no_grad():
        tokens = tiny(_frames(b, s))
        emb = tiny.embed(_frames(b, s))
    assert tokens.shape == (b, 1 + s, TINY.d_model)
    assert emb.shape == (b, TINY.d_model)


def test_embed_is_raw_cls_token(tiny: HMVE) -> None:
    x = _frames(2, 5)
    with torch.no_grad():
        emb, tokens = tiny.embed(x), tiny(x)
    torch.testing.assert_close(emb, tokens[:, 0], rtol=0, atol=0)
    assert not torch.allclose(emb.norm(dim=1), torch.ones(2))  # not normalised


def test_wrong_rank_is_invalid_input(tiny: HMVE) -> None:
    with pytest.raises(InvalidInputError, match=r"\[b, s, 3, H, W\]"):
        tiny(torch.zeros(2, 3, IM, IM))


def test_resnet18_gives_512_frame_features() -> None:
    cfg = EncoderConfig(backbone="resnet18", d_model=32, n_layers=1, n_heads=4, dim_feedforward=32)
    model = HMVE(cfg).eval()
    with torch.no_grad():
        feats = model.frame_features(_frames(1, 2))
        emb = model.embed(_frames(1, 2))
    assert model.feature_dim == 512
    assert feats.shape == (1, 2, 512)
    assert emb.shape == (1, 32)


def test_resnet50_feature_size() -> None:
    _, features = build_backbone(EncoderConfig(backbone="resnet50"))
    assert features == 2048


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "n_heads": 8}, "divisible"),
        ({"backbone": "vit"}, "backbone"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_layers": 0}, "n_layers"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EncoderConfig(**kwargs)  # type: ignore[arg-type]


def test_config_dict_round_trip() -> None:
    cfg = EncoderConfig(backbone="resnet18", backbone_weights="/w.pt", adapter_layer_norm=False)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        EncoderConfig.from_dict({"d_modle": 8})


def test_backbone_weights_with_prefixes_and_container(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source, _ = build_backbone(TINY)
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.backbone.fc.weight"] = torch.zeros(2, 2)  # a classifier: ignored
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)

    model = HMVE(EncoderConfig(**{**TINY.to_dict(), "backbone_weights": str(path)}))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.frame_encoder.state_dict()[key], value, rtol=0, atol=0)
    report = model.weights_report
    assert report is not None
    assert report.missing == []
    assert report.unexpected == ["module.backbone.fc.weight"]
    assert len(report.loaded) == len(source.state_dict())


def test_torchvision_resnet18_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone, _ = build_backbone(EncoderConfig(backbone="resnet18"))
    report = load_backbone_weights(backbone, path)
    assert report.missing == []
    assert report.unexpected == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(
        backbone.state_dict()["conv1.weight"], reference.conv1.weight, rtol=0, atol=0
    )


def test_bad_backbone_weights_files(tmp_path: Path) -> None:
    backbone, _ = build_backbone(TINY)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        load_backbone_weights(backbone, garbage)
    with pytest.raises(ModelLoadError, match="not found"):
        load_backbone_weights(backbone, tmp_path / "missing.pt")
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo.bar": torch.zeros(1)}, unrelated)
    with pytest.raises(ModelLoadError, match="none of its"):
        load_backbone_weights(backbone, unrelated)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({"stages.0.0.weight": torch.zeros(1, 1, 1, 1)}, wrong_shape)
    with pytest.raises(ModelLoadError, match="shape"):
        load_backbone_weights(backbone, wrong_shape)
    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        HMVE(EncoderConfig(**{**TINY.to_dict(), "backbone_weights": str(garbage)}))


def test_encoder_version_is_stable_and_weight_sensitive(tiny: HMVE) -> None:
    version = encoder_version(tiny, TINY)
    assert version.startswith("hmve-tiny-") and len(version) == len("hmve-tiny-") + 12
    assert encoder_version(tiny, TINY) == version
    other = HMVE(TINY)
    other.load_state_dict(tiny.state_dict())
    assert encoder_version(other, TINY) == version
    with torch.no_grad():
        other.cls_token.add_(1e-3)
    assert encoder_version(other, TINY) != version


def test_checkpoint_round_trip(tiny: HMVE, tmp_path: Path) -> None:
    path = tmp_path / "run" / "encoder.pt"
    preprocess = PreprocessConfig(im_size=IM, bbox_scale_factor=3.0)
    fragment = FragmentConfig(stride=2, fragment_length=4, max_frames=16)
    extra = {"reid_threshold": np.float64(0.7), "best_epoch": np.int64(3), "out": tmp_path}
    version = save_encoder_checkpoint(path, tiny, TINY, preprocess, fragment, extra)
    assert [p.name for p in path.parent.iterdir()] == ["encoder.pt"]  # no temporary left

    loaded = load_encoder_checkpoint(path)
    assert not loaded.encoder.training
    assert loaded.encoder_version == version == encoder_version(tiny, TINY, preprocess, fragment)
    assert loaded.encoder_config == TINY
    assert loaded.preprocess == preprocess
    assert loaded.fragment == fragment
    assert loaded.extra == {"reid_threshold": 0.7, "best_epoch": 3, "out": str(tmp_path)}
    x = _frames(3, 4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x), tiny(x), rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT
    assert set(raw) == {
        "format",
        "encoder_config",
        "preprocess",
        "fragment",
        "state_dict",
        "encoder_version",
        "extra",
    }


def test_checkpoint_does_not_reread_backbone_weights(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    backbone, _ = build_backbone(TINY)
    torch.save(backbone.state_dict(), weights)
    cfg = EncoderConfig(**{**TINY.to_dict(), "backbone_weights": str(weights)})
    path = tmp_path / "encoder.pt"
    save_encoder_checkpoint(path, HMVE(cfg), cfg, PreprocessConfig(im_size=IM), FragmentConfig())
    weights.unlink()
    assert load_encoder_checkpoint(path).encoder_config.backbone_weights == str(weights)


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_encoder_checkpoint(tmp_path / "nope.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(ModelLoadError, match="not a PolypIndex encoder checkpoint"):
        load_encoder_checkpoint(wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        load_encoder_checkpoint(garbage)


def test_version_covers_crop_settings_and_frame_rule(tiny: HMVE) -> None:
    """Two encoders identical but for their crop settings or stride get different
    versions; identical ones the same; the training fragment length does not count
    (the embedded frames are the whole-tracklet rule's)."""
    pre, frag = PreprocessConfig(im_size=IM), FragmentConfig(stride=2, fragment_length=4)
    version = encoder_version(tiny, TINY, pre, frag)
    assert version == encoder_version(tiny, TINY, PreprocessConfig(im_size=IM), frag)
    assert version != encoder_version(tiny, TINY)
    for other_pre, other_frag in (
        (PreprocessConfig(im_size=IM, bbox_scale_factor=3.0), frag),
        (PreprocessConfig(im_size=IM, mean=(0.5, 0.5, 0.5)), frag),
        (pre, FragmentConfig(stride=3, fragment_length=4)),
        (pre, FragmentConfig(stride=2, fragment_length=4, max_frames=8)),
    ):
        assert encoder_version(tiny, TINY, other_pre, other_frag) != version
    assert encoder_version(tiny, TINY, pre, FragmentConfig(stride=2, fragment_length=8)) == version


def test_checkpoint_written_before_settings_counted_keeps_its_version(
    tiny: HMVE, tmp_path: Path
) -> None:
    path = tmp_path / "old.pt"
    pre, frag = PreprocessConfig(im_size=IM), FragmentConfig()
    save_encoder_checkpoint(path, tiny, TINY, pre, frag)
    raw = torch.load(path, weights_only=True)
    raw["encoder_version"] = encoder_version(tiny, TINY)  # the hash of older files
    torch.save(raw, path)
    assert load_encoder_checkpoint(path).encoder_version == encoder_version(tiny, TINY)
    raw["encoder_version"] = "hmve-tiny-000000000000"
    torch.save(raw, path)
    with pytest.raises(ModelLoadError, match="corrupt or edited"):
        load_encoder_checkpoint(path)


def test_frame_encoder_version_covers_crop_settings(tmp_path: Path) -> None:
    backbone, _ = build_backbone(TINY)
    pre, frag = PreprocessConfig(im_size=IM), FragmentConfig()
    version = save_frame_encoder_checkpoint(
        tmp_path / "f.pt", backbone, "tiny", pre, frag, tiny_width=TINY.tiny_width
    )
    assert version == frame_encoder_version(backbone, "tiny", TINY.tiny_width, pre, frag)
    assert load_frame_encoder_checkpoint(tmp_path / "f.pt").version == version
    bigger = PreprocessConfig(im_size=IM, bbox_scale_factor=6.0)
    assert frame_encoder_version(backbone, "tiny", TINY.tiny_width, bigger, frag) != version
    assert frame_encoder_version(backbone, "tiny", TINY.tiny_width) != version
