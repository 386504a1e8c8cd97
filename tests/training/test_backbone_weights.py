"""``encoder.backbone_weights: PATH`` with the ``paper`` preset: a torchvision ImageNet-style
state dict saved locally (random weights here: nothing is downloaded) initialises the
frame encoder exactly; a missing or incompatible file is a clear error
(docs/training.md#imagenet-initialised-backbone)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from polypindex.model.core.errors import ModelLoadError  # noqa: E402
from polypindex.training.module import HmveModule  # noqa: E402
from polypindex.training.train_config import load_train_config  # noqa: E402


def _paper(weights: Path | str, backbone: str = "resnet18") -> HmveModule:
    config = load_train_config(
        "paper", {"encoder.backbone": backbone, "encoder.backbone_weights": str(weights)}
    )
    assert config.name == "paper"
    return HmveModule(config.encoder, loss=config.loss, d_proj=config.d_proj)


def test_paper_preset_loads_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    # the layout of `resnet18(weights=IMAGENET1K_V1).state_dict()`, with values no random
    # init produces (each float tensor shifted by 0.5)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for value in reference.state_dict().values():
            if value.is_floating_point():
                value.add_(0.5)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)

    module = _paper(path)
    loaded = module.encoder.frame_encoder.state_dict()
    source = reference.state_dict()
    report = module.encoder.weights_report
    assert report is not None and report.missing == []
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}  # the classifier is dropped
    assert set(loaded) == set(source) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, source[key]), key

    # without the file the backbone starts at a random init
    plain = load_train_config("paper", {"encoder.backbone": "resnet18"})
    random_init = HmveModule(plain.encoder, loss=plain.loss, d_proj=plain.d_proj)
    conv = random_init.encoder.frame_encoder.state_dict()["conv1.weight"]
    assert not torch.equal(conv, source["conv1.weight"])


def test_a_checkpoint_style_container_with_prefixes_loads(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    wrapped = {"state_dict": {f"module.backbone.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped, path)
    loaded = _paper(path).encoder.frame_encoder.state_dict()
    assert torch.equal(loaded["layer4.1.bn2.weight"], reference.state_dict()["layer4.1.bn2.weight"])


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"backbone weights file not found: .*nope\.pth"):
        _paper(tmp_path / "nope.pth")


def test_incompatible_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"has shape .* \(wrong architecture\?\)"):
        _paper(path, backbone="resnet50")  # resnet18 weights into the paper's resnet50


def test_not_a_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot read backbone weights"):
        _paper(garbage)
    other = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(3)}, other)
    with pytest.raises(ModelLoadError, match="none of its 1 keys matches"):
        _paper(other)
