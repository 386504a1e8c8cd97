"""The HMVE tracklet encoder architecture (docs/method.md#hmve-encoder) and the frame-mean baseline.

A frame encoder (ResNet-18/50 from torchvision, a ViT of :mod:`model.nets.vit`, or a tiny
conv net for tests) embeds every frame; a linear adapter (+ LayerNorm) maps the
features to ``d_model``; a learned CLS token is prepended and a Transformer encoder
runs over ``[CLS, frame_1 .. frame_s]``. The tracklet embedding is the CLS output.

Nothing is downloaded: backbones start random, or from a local state-dict file
(``EncoderConfig.backbone_weights``). Versions and checkpoints: :mod:`model.nets.encoder`.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from polypindex.model.core.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.data.config import JsonConfig
from polypindex.model.nets.vit import VIT_PRESETS, VisionTransformer

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet50", "tiny", *VIT_PRESETS)
_STATE_DICT_CONTAINER_KEYS = ("state_dict", "model")


@dataclass(frozen=True)
class EncoderConfig(JsonConfig):
    """The HMVE architecture (docs/method.md#hmve-encoder).

    Attributes:
        backbone: frame encoder: ``"resnet18"`` (512 features), ``"resnet50"``
            (2048 features), ``"tiny"`` (a 4-stage conv net for tests,
            ``8 * tiny_width`` features), or a ViT of :data:`model.nets.vit.VIT_PRESETS`
            (``"vit_tiny"``: ViT-Tiny/8, 192 features; ``"vit_micro"``: tests).
        tiny_width: channels of the tiny backbone's first stage (doubled per stage).
        d_model: width of the adapter output, the CLS token and the Transformer.
        n_layers: Transformer encoder layers.
        n_heads: attention heads per layer; must divide ``d_model``.
        dim_feedforward: hidden size of each layer's feed-forward block.
        dropout: dropout inside the Transformer (training only).
        adapter_layer_norm: apply a LayerNorm after the linear adapter.
        backbone_weights: optional local file with initial frame-encoder weights:
            a torchvision-style state dict, or a dict holding one under
            ``"state_dict"`` (or ``"model"``). Key prefixes such as ``module.``
            or ``backbone.`` are stripped; the classifier (``fc.*``) is ignored.
    """

    backbone: str = "resnet50"
    tiny_width: int = 32
    d_model: int = 256
    n_layers: int = 3
    n_heads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1
    adapter_layer_norm: bool = True
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.tiny_width < 1:
            raise ConfigError(f"tiny_width must be >= 1, got {self.tiny_width}")
        if self.d_model < 1 or self.n_heads < 1:
            raise ConfigError(
                f"d_model and n_heads must be >= 1, got {self.d_model} and {self.n_heads}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"e.g. d_model={self.n_heads * max(1, round(self.d_model / self.n_heads))}"
            )
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {self.n_layers}")
        if self.dim_feedforward < 1:
            raise ConfigError(f"dim_feedforward must be >= 1, got {self.dim_feedforward}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backbone_weights is not None and not isinstance(self.backbone_weights, str):
            # A Path given by a caller: store it as a string so the config stays JSON-able.
            object.__setattr__(self, "backbone_weights", str(self.backbone_weights))


class TinyBackbone(nn.Module):
    """A small 4-stage conv net (tests and smoke runs).

    Each stage is ``conv3x3 (stride 2) → BatchNorm → ReLU``; channels
    ``w, 2w, 4w, 8w``; global average pooling.

    Shapes:
        ``[n, 3, H, W] → [n, 8 * width]``.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
                for c_in, c_out in itertools.pairwise(chans)
            ]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = chans[-1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.stages(x)), 1)


def build_backbone(config: EncoderConfig) -> tuple[nn.Module, int]:
    """The frame encoder without classifier, and its feature size (512, 2048, 8·tiny_width
    or the ViT's width)."""
    if config.backbone == "tiny":
        tiny = TinyBackbone(config.tiny_width)
        return tiny, tiny.out_features
    if config.backbone in VIT_PRESETS:
        vit = VisionTransformer(VIT_PRESETS[config.backbone])
        return vit, vit.out_features
    factory = (
        torchvision.models.resnet18
        if config.backbone == "resnet18"
        else torchvision.models.resnet50
    )
    net = factory(weights=None)
    features = int(net.fc.in_features)
    net.fc = nn.Identity()  # type: ignore[assignment]
    return net, features


@dataclass(frozen=True)
class WeightsLoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        path: the file read.
        loaded: backbone keys taken from the file.
        missing: backbone keys the file did not provide (left at their init).
        unexpected: file keys that matched no backbone parameter (incl. ``fc.*``).
    """

    path: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelLoadError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "unreadable"
        raise ModelLoadError(f"cannot read backbone weights {path}: {exc}") from exc
    if isinstance(obj, dict):
        for key in _STATE_DICT_CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"backbone weights {path} is not a state dict (a mapping of names to tensors, "
            f"optionally under 'state_dict')"
        )
    return {str(k): v for k, v in obj.items()}


def _match_key(key: str, targets: dict[str, Tensor]) -> str | None:
    """Strip leading dotted components (``module.``, ``backbone.``, ...) until the key
    names a target; ``None`` when no suffix does."""
    parts = key.split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        if candidate in targets:
            return candidate
    return None


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> WeightsLoadReport:
    """Load a local state-dict file into a frame encoder.

    Args:
        backbone: the module returned by :func:`build_backbone`.
        path: a torch file holding a state dict, or a dict with it under ``"state_dict"``.

    Returns:
        A :class:`WeightsLoadReport`; missing and unexpected keys are also logged.

    Raises:
        ModelLoadError: the file is missing or unreadable, no key matches the
            backbone, or a matched tensor has the wrong shape.
    """
    p = Path(path)
    source = _read_state_dict(p)
    targets = backbone.state_dict()
    matched: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in source.items():
        name = _match_key(key, targets)
        if name is None or name in matched:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(targets[name].shape):
            raise ModelLoadError(
                f"backbone weights {p}: {key!r} has shape {tuple(value.shape)}, "
                f"the backbone's {name!r} has {tuple(targets[name].shape)} (wrong architecture?)"
            )
        matched[name] = value
    if not matched:
        raise ModelLoadError(
            f"backbone weights {p}: none of its {len(source)} keys matches the backbone "
            f"(e.g. {sorted(source)[:3]} vs {sorted(targets)[:3]}); wrong architecture?"
        )
    backbone.load_state_dict(matched, strict=False)
    missing = sorted(set(targets) - set(matched))
    if missing:
        logger.warning(
            "backbone weights %s: %d missing key(s) left at init: %s", p, len(missing), missing[:10]
        )
    ignored = [
        k for k in unexpected if not re.search(r"(^|\.)fc\.(weight|bias)$", k)
    ]  # classifier: expected
    if ignored:
        logger.warning(
            "backbone weights %s: %d unexpected key(s) ignored: %s", p, len(ignored), ignored[:10]
        )
    logger.info("backbone weights %s: loaded %d tensors", p, len(matched))
    return WeightsLoadReport(str(p), sorted(matched), missing, sorted(unexpected))


class HMVE(nn.Module):
    """Hierarchical multi-view video encoder (docs/method.md#hmve-encoder).

    Args:
        config: the architecture; defaults to :class:`EncoderConfig()`.
        load_weights: read ``config.backbone_weights`` (if set). Loading
            a checkpoint passes ``False``: its state dict already holds the weights.

    Shapes:
        ``forward``: frames ``[b, s, 3, H, W]`` → tokens ``[b, 1 + s, d_model]``
        (token 0 is the CLS output). ``embed``: ``[b, s, 3, H, W]`` → ``[b, d_model]``.
        Any ``b >= 1`` and ``s >= 1``; exportable to ONNX with both dynamic.
    """

    def __init__(self, config: EncoderConfig | None = None, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        cfg = self.config
        self.frame_encoder, self.feature_dim = build_backbone(cfg)
        self.weights_report: WeightsLoadReport | None = None
        if load_weights and cfg.backbone_weights:
            self.weights_report = load_backbone_weights(self.frame_encoder, cfg.backbone_weights)
        self.adapter = nn.Linear(self.feature_dim, cfg.d_model)
        self.adapter_norm: nn.Module = (
            nn.LayerNorm(cfg.d_model) if cfg.adapter_layer_norm else nn.Identity()
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.d_model,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=cfg.n_layers, enable_nested_tensor=False
        )

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def frame_features(self, x: Tensor) -> Tensor:
        """Per-frame backbone features, before the adapter.

        Args:
            x: ``[b, s, 3, H, W]`` normalised crops.

        Returns:
            ``[b, s, feature_dim]`` (512 for resnet18, 2048 for resnet50).
        """
        if x.dim() != 5 or x.shape[2] != 3:
            raise InvalidInputError(
                f"HMVE expects frames of shape [b, s, 3, H, W], got {tuple(x.shape)}"
            )
        b, s = x.shape[0], x.shape[1]
        feats = self.frame_encoder(x.flatten(0, 1))
        return feats.reshape(b, s, self.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Encode tracklet fragments.

        Args:
            x: ``[b, s, 3, H, W]`` float crops, already normalised (``model.data.preprocess``).

        Returns:
            ``[b, 1 + s, d_model]``: the CLS output followed by one token per frame.
        """
        tokens = self.adapter_norm(self.adapter(self.frame_features(x)))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.transformer(torch.cat([cls, tokens], dim=1))

    def embed(self, x: Tensor) -> Tensor:
        """The tracklet embedding: the CLS output, NOT L2-normalised.

        Args:
            x: ``[b, s, 3, H, W]`` normalised crops.

        Returns:
            ``[b, d_model]``.
        """
        return self.forward(x)[:, 0]


class FrameMeanEncoder(nn.Module):
    """The frame-mean baseline: embed every frame, average over time (no temporal model).

    Each frame feature is L2-normalised before the mean, so every frame counts equally.

    Args:
        backbone: a frame encoder ``[n, 3, H, W] → [n, feature_dim]``.
        feature_dim: its output size.

    Shapes:
        ``forward`` / ``embed``: ``[b, s, 3, H, W]`` → ``[b, feature_dim]`` (not
        L2-normalised, like ``HMVE.embed``).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.frame_encoder = backbone
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[2] != 3:
            raise InvalidInputError(
                f"FrameMeanEncoder expects frames of shape [b, s, 3, H, W], got {tuple(x.shape)}"
            )
        b, s = x.shape[0], x.shape[1]
        feats = self.frame_encoder(x.flatten(0, 1)).reshape(b, s, self.feature_dim)
        return nn.functional.normalize(feats, dim=-1).mean(dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward`: ``[b, s, 3, H, W]`` → ``[b, feature_dim]``."""
        return self.forward(x)
