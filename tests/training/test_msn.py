"""MSN frame pretraining: loss, augmentations, ViT masking, EMA, the end-to-end run,
HMVE initialisation from it, and the frame-mean ONNX baseline."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from polypindex.cli import app
from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.data.preprocess import preprocess_frames, read_image
from polypindex.model.nets.encoder import (
    load_encoder_checkpoint,
    load_frame_encoder_checkpoint,
    save_frame_encoder_checkpoint,
)
from polypindex.model.nets.export import export_frame_mean_onnx
from polypindex.model.nets.hmve import HMVE, EncoderConfig, FrameMeanEncoder, build_backbone
from polypindex.model.nets.vit import VIT_PRESETS, VisionTransformer
from polypindex.model.runtime.onnx import OnnxEncoder, read_onnx_metadata
from polypindex.training.augment import color_jitter, mask_patches, random_flip, random_keep_indices
from polypindex.training.losses import msn_loss
from polypindex.training.msn import MsnModule, ema_momentum, pretrain_frames
from polypindex.training.msn_config import load_msn_config
from polypindex.training.msn_init import load_msn_into_hmve
from polypindex.training.train import train
from polypindex.training.train_config import TrainConfig, load_train_config

PRE = PreprocessConfig(im_size=32)


def _naive_msn(
    a: np.ndarray, t: np.ndarray, c: np.ndarray, tau: float, temp: float, w: float
) -> float:
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pa = softmax(unit(a) @ unit(c).T / tau)
    pt = softmax(unit(t) @ unit(c).T / tau) ** (1 / temp)
    pt = pt / pt.sum(axis=1, keepdims=True)
    b = len(t)
    ce = np.mean([-(pt[i % b] * np.log(pa[i])).sum() for i in range(len(a))])
    mean = pa.mean(axis=0)
    return float(ce + w * (mean * np.log(mean)).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_msn_loss_matches_a_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, t, c = rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    loss, terms = msn_loss(torch.tensor(a), torch.tensor(t), torch.tensor(c), 0.3, 0.5, 0.7)
    assert float(loss) == pytest.approx(_naive_msn(a, t, c, 0.3, 0.5, 0.7), rel=1e-5)
    assert set(terms) == {"ce", "me_max", "anchor_entropy", "target_entropy"}


def test_msn_loss_closed_form_uniform_assignment() -> None:
    # every anchor orthogonal to every prototype: p = 1/K, so CE = log K, me-max = -log K
    k = 4
    protos = torch.eye(8)[:k]
    anchors = torch.eye(8)[k:]
    targets = torch.randn(2, 8)
    loss, terms = msn_loss(anchors, targets, protos, me_max_weight=1.0)
    assert float(terms["ce"]) == pytest.approx(math.log(k), rel=1e-6)
    assert float(terms["me_max"]) == pytest.approx(-math.log(k), rel=1e-6)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(Exception, match="multiple of targets"):
        msn_loss(torch.randn(5, 8), targets, protos)


def test_msn_loss_gradient_reaches_anchors_and_prototypes_only() -> None:
    a = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(2, 6, requires_grad=True)
    c = torch.randn(3, 6, requires_grad=True)
    msn_loss(a, t, c)[0].backward()
    assert a.grad is not None and c.grad is not None and t.grad is None


def test_masks_and_augmentations() -> None:
    gen = torch.Generator().manual_seed(0)
    keep = random_keep_indices(3, 16, 0.75, gen)
    assert keep.shape == (3, 4)
    assert all(len(set(row.tolist())) == 4 for row in keep)
    x = torch.ones(3, 3, 32, 32)
    masked = mask_patches(x, keep, 8)
    assert masked.mean().item() == pytest.approx(0.25)  # 4 of 16 patches kept
    patch = masked[0, 0].reshape(4, 8, 4, 8).mean(dim=(1, 3)).flatten()
    assert torch.equal(torch.nonzero(patch).flatten(), keep[0])
    y = torch.randn(2, 3, 8, 8)
    assert torch.equal(random_flip(y, 1.0, gen), y.flip(-1))
    assert torch.equal(random_flip(y, 0.0, gen), y)
    same = color_jitter(y, PRE, strength=0.0, prob=1.0, generator=gen)
    assert torch.allclose(same, y.clamp(-0.45 / 0.225, 0.55 / 0.225), atol=1e-5)


def test_vit_token_dropping() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(VIT_PRESETS["vit_micro"]).eval()
    x = torch.randn(2, 3, 32, 32)
    full = vit(x)
    assert full.shape == (2, 32)
    all_kept = torch.arange(16).expand(2, 16)
    assert torch.allclose(vit(x, keep=all_kept), full, atol=1e-5)
    assert not torch.allclose(vit(x, keep=all_kept[:, :4]), full, atol=1e-3)


@pytest.mark.parametrize("backbone", ["tiny", "vit_micro"])
def test_msn_step_and_ema(backbone: str) -> None:
    config = load_msn_config("msn_test_tiny", {"backbone": backbone})
    module = MsnModule(config, total_steps=10)
    frames = torch.randn(4, 3, 32, 32)
    loss, _ = module.compute_loss(frames)
    loss.backward()
    grads = [p.grad for p in module.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert all(p.grad is None for p in module.target_backbone.parameters())
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.target_backbone.parameters()]
    module.update_target(1.0)
    assert all(
        torch.equal(a, b) for a, b in zip(before, module.target_backbone.parameters(), strict=True)
    )
    module.update_target(0.0)
    for online, target in zip(
        module.backbone.parameters(), module.target_backbone.parameters(), strict=True
    ):
        assert torch.equal(online, target)
    assert ema_momentum(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_momentum(9, 10, 0.996, 1.0) == pytest.approx(1.0)


def test_msn_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of mask_patch_size"):
        load_msn_config("msn_test_tiny", {"mask_patch_size": 7})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['mask'\]"):
        load_msn_config("msn_test_tiny", {"mask": 0.5})
    for name, backbone in (("msn_resnet18", "resnet18"), ("msn_vit_tiny", "vit_tiny")):
        c = load_msn_config(name)
        assert c.backbone == backbone and c.preprocess == load_train_config("demo").preprocess


@pytest.fixture(scope="module")
def msn_run(disc_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("msn")
    config = load_msn_config(
        "msn_test_tiny",
        {"data_root": str(disc_data), "out_dir": str(out / "run"), "cache_dir": str(out / "crops")},
    )
    result = pretrain_frames(config, progress=False)
    assert result.epochs_trained == 1 and result.n_frames >= config.batch_size
    assert math.isfinite(result.final_loss)
    return result.checkpoint


def test_pretrain_frames_writes_a_frame_encoder(msn_run: Path) -> None:
    loaded = load_frame_encoder_checkpoint(msn_run)
    assert loaded.backbone_name == "tiny" and loaded.tiny_width == 8 and loaded.feature_dim == 64
    assert loaded.extra["epoch"] == 1 and loaded.extra["msn_config"]["backbone"] == "tiny"
    assert loaded.preprocess == PRE and loaded.fragment.stride == 2
    assert loaded.version.startswith("frames-tiny-")
    assert (msn_run.parent / "last.ckpt").is_file()
    assert (msn_run.parent / "logs" / "version_0" / "metrics.csv").is_file()
    assert list((msn_run.parent / "tensorboard").rglob("events.out.tfevents.*"))
    # the weights moved away from a fresh initialisation
    fresh, _ = build_backbone(EncoderConfig(backbone="tiny", tiny_width=8))
    state = loaded.backbone.state_dict()
    assert any(
        not torch.equal(v, state[k]) for k, v in fresh.state_dict().items() if v.is_floating_point()
    )


def test_msn_initialises_the_hmve_frame_encoder(
    msn_run: Path, disc_data: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    config = EncoderConfig(
        backbone="tiny", tiny_width=8, d_model=32, n_layers=1, n_heads=4, dim_feedforward=32
    )
    encoder = HMVE(config)
    info = load_msn_into_hmve(encoder, msn_run, PRE)
    loaded = load_frame_encoder_checkpoint(msn_run)
    for k, v in loaded.backbone.state_dict().items():
        assert torch.equal(encoder.frame_encoder.state_dict()[k], v)
    assert info["version"] == loaded.version and info["epoch"] == 1
    with pytest.raises(ConfigError, match=r"backbone is 'tiny' \(tiny_width=8\).*'resnet18'"):
        load_msn_into_hmve(HMVE(EncoderConfig(backbone="resnet18", d_model=32, n_heads=4)), msn_run)
    with pytest.raises(ConfigError, match=r"tiny_width=8.*tiny_width=32"):
        load_msn_into_hmve(
            HMVE(EncoderConfig(backbone="tiny", tiny_width=32, d_model=32, n_heads=4)), msn_run
        )
    with pytest.raises(ModelLoadError, match="not a frame-encoder checkpoint"):
        torch.save({"format": "x"}, tmp_path / "bad.pt")
        load_msn_into_hmve(encoder, tmp_path / "bad.pt")
    # through the training config
    train_config = tiny_config(
        disc_data, {"encoder.tiny_width": 8, "init_frame_encoder": str(msn_run)}
    )
    result = train(train_config, progress=False)
    extra = load_encoder_checkpoint(result.best_checkpoint).extra
    assert extra["init_frame_encoder"]["version"] == loaded.version


def test_frame_mean_export_parity_and_contract(
    msn_run: Path, disc_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fm.onnx"
    result = CliRunner().invoke(
        app,
        ["export-frame-mean", str(msn_run), "--out", str(out), "--reid-threshold", "0.7"],
    )
    assert result.exit_code == 0, result.output
    meta = read_onnx_metadata(out)
    assert {k for k in meta if k.startswith("polypindex.")} == {
        f"polypindex.{k}"
        for k in (
            "format",
            "encoder_version",
            "preprocess",
            "fragment",
            "encoder_config",
            "embedding_dim",
            "reid_threshold",
            "training",
            "reference_embeddings",
        )
    }
    assert json.loads(meta["polypindex.encoder_config"])["kind"] == "frame_mean"
    assert "precision" in json.loads(meta["polypindex.training"])
    onnx_encoder = OnnxEncoder(out)
    loaded = load_frame_encoder_checkpoint(msn_run)
    assert onnx_encoder.dim == 64 and onnx_encoder.preprocess == PRE
    assert onnx_encoder.fragment.fragment_length == -1 and onnx_encoder.reid_threshold == 0.7
    assert onnx_encoder.version.startswith("framemean-tiny-")
    # real crops through the one preprocessing: torch frame-mean vs ONNX Runtime
    tracklets = load_coco_split(disc_data, "val").tracklets(TrackletConfig(min_tracklet_length=8))[
        :3
    ]
    torch_model = FrameMeanEncoder(loaded.backbone, loaded.feature_dim).eval()
    for t in tracklets:
        idx = np.arange(0, len(t), 2)[:7]
        x = preprocess_frames([read_image(t.image_paths[i]) for i in idx], t.boxes[idx], PRE)
        with torch.no_grad():
            want = torch.nn.functional.normalize(torch_model(torch.from_numpy(x)[None]), dim=-1)
        got = onnx_encoder._session.run(["embedding"], {"frames": x[None]})[0]
        got = got / np.linalg.norm(got, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_frame_mean_of_a_vit_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit, _ = build_backbone(EncoderConfig(backbone="vit_micro"))
    ckpt = tmp_path / "vit.pt"
    save_frame_encoder_checkpoint(
        ckpt, vit, "vit_micro", PRE, FragmentConfig(stride=2), extra={"reid_threshold": 0.65}
    )
    report = export_frame_mean_onnx(ckpt, tmp_path / "vit.onnx")
    assert report.max_abs_diff <= 1e-4  # parity checked on (3, 5) and (1, 9) inputs
    assert OnnxEncoder(tmp_path / "vit.onnx").reid_threshold == 0.65
    with pytest.raises(ConfigError, match="not a 'tiny' backbone"):
        save_frame_encoder_checkpoint(ckpt, vit, "tiny", PRE, FragmentConfig())
