"""``polypindex import-checkpoint``: a state dict with the reference implementation's HMVE key
names (``mve.sfe.backbone.*``, ``mve.adapter.*``, ``mve.feature_norm.*``, ``mve.cls_token``,
``mve.encoder.layers.*``, ``projector.*``), random tensors, becomes a PolypIndex checkpoint
that loads and embeds exactly like the reference's forward pass and like directly renamed
weights (docs/training.md#importing-a-reference-checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from polypindex.cli import app  # noqa: E402
from polypindex.model.core.errors import ModelLoadError  # noqa: E402
from polypindex.model.nets.encoder import load_encoder_checkpoint  # noqa: E402
from polypindex.model.nets.hmve import HMVE  # noqa: E402
from polypindex.training.reference_import import import_reference_checkpoint  # noqa: E402

D_MODEL, HEADS, LAYERS, FF = 64, 4, 2, 128


class _ReferenceShaped(nn.Module):
    """A module laid out as the reference's LightningModule is (attribute names decide the
    state-dict keys), with its forward pass: frames → ResNet features → adapter →
    LayerNorm → [CLS, tokens] → Transformer; the embedding is token 0."""

    def __init__(self, encoder_norm: bool = False) -> None:
        super().__init__()
        self.mve = nn.Module()
        self.mve.sfe = nn.Module()
        resnet = torchvision.models.resnet18(weights=None)
        resnet.fc = nn.Identity()
        self.mve.sfe.backbone = resnet
        self.mve.adapter = nn.Linear(512, D_MODEL)
        self.mve.feature_norm = nn.LayerNorm(D_MODEL)
        self.mve.cls_token = nn.Parameter(torch.zeros(1, 1, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.1, batch_first=True)
        norm = nn.LayerNorm(D_MODEL) if encoder_norm else None
        self.mve.encoder = nn.TransformerEncoder(
            layer, LAYERS, norm=norm, enable_nested_tensor=False
        )
        self.projector = nn.Sequential(
            nn.Linear(D_MODEL, D_MODEL), nn.ReLU(), nn.Linear(D_MODEL, 16)
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        feats = self.mve.sfe.backbone(x.flatten(0, 1)).reshape(b, s, -1)
        tokens = self.mve.feature_norm(self.mve.adapter(feats))
        cls = self.mve.cls_token.expand(b, -1, -1)
        return self.mve.encoder(torch.cat([cls, tokens], dim=1))[:, 0]


def _randomised(encoder_norm: bool = False) -> _ReferenceShaped:
    torch.manual_seed(7)
    model = _ReferenceShaped(encoder_norm)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.randn_like(value) * (0.05 if "weight" in name else 0.1))
                if "running_var" in name:
                    value.abs_().add_(0.5)
    return model.eval()


def _save_ckpt(model: nn.Module, path: Path, **hparams: object) -> Path:
    hyper = {"backbone_arch": "resnet18", "d_in": 512, "d_model": D_MODEL, "n_heads": HEADS,
             "n_layers": LAYERS, "d_feedforward": FF, "dropout": 0.1, "use_feature_norm": True,
             "use_encoder_norm": False, "d_proj": 16, **hparams}  # fmt: skip
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hyper, "epoch": 3}, path)
    return path


def _directly_renamed(model: _ReferenceShaped) -> HMVE:
    """Our HMVE with the weights renamed by a hand-written table (no importer code)."""
    from polypindex.model.nets.hmve import EncoderConfig

    table = (("mve.sfe.backbone.", "frame_encoder."), ("mve.feature_norm.", "adapter_norm."),
             ("mve.encoder.", "transformer."), ("mve.", ""))  # fmt: skip
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("projector."):
            continue
        for old, new in table:
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                break
    config = EncoderConfig(
        backbone="resnet18", d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS, dim_feedforward=FF
    )
    ours = HMVE(config, load_weights=False)
    ours.load_state_dict(renamed, strict=True)
    return ours.eval()


def test_import_matches_the_reference_forward_and_direct_renaming(tmp_path: Path) -> None:
    reference = _randomised()
    src = _save_ckpt(reference, tmp_path / "hmve.ckpt")
    dst = tmp_path / "imported" / "encoder.pt"

    result = CliRunner().invoke(app, ["import-checkpoint", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and "resnet18" in result.output

    loaded = load_encoder_checkpoint(dst)  # checks the stored version against the weights
    cfg = loaded.encoder_config
    assert (cfg.backbone, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.dim_feedforward) == (
        "resnet18", D_MODEL, LAYERS, HEADS, FF,
    )  # fmt: skip
    assert cfg.adapter_layer_norm
    assert loaded.preprocess.im_size == 232  # the paper preset's crops
    assert loaded.extra["imported_from"] == str(src)

    x = torch.randn(3, 5, 3, 32, 32)
    with torch.no_grad():
        ours = loaded.encoder.embed(x)
        theirs = reference.embed(x)
        direct = _directly_renamed(reference).embed(x)
    assert torch.allclose(ours, direct, atol=1e-6)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_report_lists_the_dropped_projector(tmp_path: Path) -> None:
    src = _save_ckpt(_randomised(), tmp_path / "hmve.ckpt")
    report = import_reference_checkpoint(src, tmp_path / "e.pt", reid_threshold=0.7)
    assert all(k.startswith("projector.") for k in report.dropped) and len(report.dropped) == 4
    assert report.mapped["mve.feature_norm.weight"] == "adapter_norm.weight"
    assert report.mapped["mve.encoder.layers.1.linear2.bias"] == "transformer.layers.1.linear2.bias"
    assert load_encoder_checkpoint(tmp_path / "e.pt").extra["reid_threshold"] == 0.7


def test_a_bare_ddp_state_dict_imports(tmp_path: Path) -> None:
    reference = _randomised()
    src = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, src)
    report = import_reference_checkpoint(src, tmp_path / "e.pt", n_heads=HEADS)
    assert report.encoder_config.n_heads == HEADS


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "reference checkpoint not found"),
        ("garbage", "cannot read reference checkpoint"),
        ("encoder_norm", "use_encoder_norm"),
        ("not_hmve", "not a reference HMVE checkpoint"),
        ("contradiction", "d_model is 64 in the weights but 128"),
    ],
)
def test_clear_errors(tmp_path: Path, case: str, message: str) -> None:
    src = tmp_path / "src.ckpt"
    if case == "garbage":
        src.write_bytes(b"no torch here")
    elif case == "encoder_norm":
        _save_ckpt(_randomised(encoder_norm=True), src, use_encoder_norm=True)
    elif case == "not_hmve":
        torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, src)
    elif case == "contradiction":
        _save_ckpt(_randomised(), src, d_model=128)
    with pytest.raises(ModelLoadError, match=message):
        import_reference_checkpoint(src, tmp_path / "e.pt")
    assert not (tmp_path / "e.pt").exists()
    result = CliRunner().invoke(app, ["import-checkpoint", str(src), str(tmp_path / "e.pt")])
    assert result.exit_code == 1 and "error:" in result.output
