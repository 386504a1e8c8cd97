"""The HMVE tracklet encoder (SPEC §4) and its checkpoint format.

A frame encoder (ResNet-18/50 from torchvision, or a tiny conv net for tests)
embeds every frame; a linear adapter (+ LayerNorm) maps the features to
``d_model``; a learned CLS token is prepended and a Transformer encoder runs
over ``[CLS, frame_1 .. frame_s]``. The tracklet embedding is the CLS output.

Nothing is downloaded: backbones start random, or from a local state-dict file
(``EncoderConfig.backbone_weights``).

The checkpoint written by :func:`save_encoder_checkpoint` carries the
architecture, the preprocessing and the fragment settings, so export and
evaluation never fall back to their own defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from polypindex.model.config import FragmentConfig, PreprocessConfig, _from_dict
from polypindex.model.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.vit import VIT_PRESETS, VisionTransformer

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet50", "tiny", *VIT_PRESETS)
CHECKPOINT_FORMAT = "polypindex-encoder/1"
FRAME_CHECKPOINT_FORMAT = "polypindex-frame-encoder/1"
_STATE_DICT_CONTAINER_KEYS = ("state_dict", "model")


@dataclass(frozen=True)
class EncoderConfig:
    """The HMVE architecture (SPEC §4).

    Attributes:
        backbone: frame encoder: ``"resnet18"`` (512 features), ``"resnet50"``
            (2048 features), ``"tiny"`` (a 4-stage conv net for tests,
            ``8 * tiny_width`` features), or a ViT of :data:`model.vit.VIT_PRESETS`
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return _from_dict(cls, data)


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
    """Hierarchical multi-view video encoder (SPEC §4).

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
            x: ``[b, s, 3, H, W]`` float crops, already normalised (``model.preprocess``).

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


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else b""


def encoder_version(encoder: HMVE, config: EncoderConfig) -> str:
    """A stable id of architecture + weights: ``hmve-<backbone>-<12 hex>``.

    The hash is sha256 over the config JSON (without ``backbone_weights``, a
    machine-local path that the weights already capture) and every state-dict
    tensor's name, dtype, shape and bytes, in name order.
    """
    h = hashlib.sha256()
    h.update(
        json.dumps(
            dataclasses.replace(config, backbone_weights=None).to_dict(), sort_keys=True
        ).encode()
    )
    state = encoder.state_dict()
    for name in sorted(state):
        t = state[name]
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return f"hmve-{config.backbone}-{h.hexdigest()[:12]}"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@dataclass
class LoadedEncoder:
    """A checkpoint read by :func:`load_encoder_checkpoint`.

    Attributes:
        encoder: the HMVE, on CPU, in eval mode.
        encoder_config: its architecture.
        preprocess: the crop settings it was trained with.
        fragment: the fragment settings it was trained with.
        encoder_version: see :func:`encoder_version`.
        extra: training information (``reid_threshold``, ...), JSON-compatible.
        path: the file read.
    """

    encoder: HMVE
    encoder_config: EncoderConfig
    preprocess: PreprocessConfig
    fragment: FragmentConfig
    encoder_version: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_encoder_checkpoint(
    path: str | Path,
    encoder: HMVE,
    encoder_config: EncoderConfig,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write an encoder checkpoint atomically (temporary file, then rename).

    The file is a torch dict ``{"format": "polypindex-encoder/1", "encoder_config",
    "preprocess", "fragment", "state_dict", "encoder_version", "extra"}``; the
    configs are plain dicts, ``extra`` is made JSON-compatible (numpy scalars →
    Python numbers), so the file loads with ``torch.load(weights_only=True)``.

    Args:
        path: destination (parent folders are created).
        encoder: the HMVE whose weights are saved (any device).
        encoder_config: its architecture.
        preprocess: the crop settings used in training.
        fragment: the fragment settings used in training.
        extra: e.g. ``{"reid_threshold": 0.71, "best_epoch": 12, ...}``.

    Returns:
        The encoder version written.
    """
    p = Path(path)
    extra = json.loads(json.dumps(extra or {}, default=_jsonable))
    if "reid_threshold" in extra and not isinstance(extra["reid_threshold"], int | float):
        raise ConfigError(
            f"extra['reid_threshold'] must be a number, got {extra['reid_threshold']!r}"
        )
    state = {k: v.detach().to("cpu").clone() for k, v in encoder.state_dict().items()}
    version = encoder_version(encoder, encoder_config)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "encoder_config": encoder_config.to_dict(),
        "preprocess": preprocess.to_dict(),
        "fragment": fragment.to_dict(),
        "state_dict": state,
        "encoder_version": version,
        "extra": extra,
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def _read_checkpoint(
    p: Path, what: str, expected_format: str, how_to_write: str, kind: str | None = None
) -> dict[str, Any]:
    """The payload dict of a checkpoint of ``expected_format``; ModelLoadError otherwise
    (``kind`` names it in the wrong-format message, default ``what``)."""
    if not p.is_file():
        raise ModelLoadError(f"{what} not found: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {what} {p}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelLoadError(
            f"{p} is not a {kind or what} (format {found!r}, expected {expected_format!r}); "
            f"{how_to_write}"
        )
    return payload


def load_encoder_checkpoint(path: str | Path) -> LoadedEncoder:
    """Read a checkpoint written by :func:`save_encoder_checkpoint`.

    The backbone-weights file named in the config is not read again (the state
    dict holds the weights). The stored version is checked against the weights.

    Raises:
        ModelLoadError: missing or unreadable file, wrong format, weights that do
            not fit the stored architecture, or a version mismatch (corruption).
    """
    p = Path(path)
    payload = _read_checkpoint(
        p,
        "encoder checkpoint",
        CHECKPOINT_FORMAT,
        "write it with model.encoder.save_encoder_checkpoint",
        kind="PolypIndex encoder checkpoint",
    )
    missing = [
        k
        for k in ("encoder_config", "preprocess", "fragment", "state_dict", "encoder_version")
        if k not in payload
    ]
    if missing:
        raise ModelLoadError(f"encoder checkpoint {p} lacks {missing}")
    try:
        config = EncoderConfig.from_dict(payload["encoder_config"])
        preprocess = PreprocessConfig.from_dict(payload["preprocess"])
        fragment = FragmentConfig.from_dict(payload["fragment"])
    except (ConfigError, TypeError) as exc:
        raise ModelLoadError(f"encoder checkpoint {p} has an invalid config: {exc}") from exc
    encoder = HMVE(config, load_weights=False)
    try:
        encoder.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelLoadError(
            f"encoder checkpoint {p}: weights do not fit its config: {exc}"
        ) from exc
    encoder.eval()
    version = encoder_version(encoder, config)
    if version != payload["encoder_version"]:
        raise ModelLoadError(
            f"encoder checkpoint {p}: stored version {payload['encoder_version']} but the weights hash to "
            f"{version} (corrupt or edited file)"
        )
    return LoadedEncoder(
        encoder, config, preprocess, fragment, version, dict(payload.get("extra") or {}), p
    )


# --- Frame encoders on their own (MSN pretraining, the frame-mean baseline; SPEC §7) ---


def frame_encoder_version(backbone: nn.Module, backbone_name: str, tiny_width: int) -> str:
    """A stable id of a frame encoder's architecture + weights: ``frames-<backbone>-<12 hex>``."""
    h = hashlib.sha256(json.dumps([backbone_name, tiny_width]).encode())
    state = backbone.state_dict()
    for name in sorted(state):
        t = state[name]
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return f"frames-{backbone_name}-{h.hexdigest()[:12]}"


@dataclass
class LoadedFrameEncoder:
    """A frame-encoder checkpoint read by :func:`load_frame_encoder_checkpoint`.

    Attributes:
        backbone: the frame encoder (``[n, 3, H, W] → [n, feature_dim]``), CPU, eval mode.
        backbone_name: one of :data:`BACKBONES`.
        tiny_width: the tiny backbone's width (recorded for every backbone).
        feature_dim: size of a frame feature.
        preprocess: the crop settings it was trained with.
        fragment: the frame sampling it was trained with (stride, max_frames).
        version: see :func:`frame_encoder_version`.
        extra: training information (MSN config, epoch, ...).
        path: the file read.
    """

    backbone: nn.Module
    backbone_name: str
    tiny_width: int
    feature_dim: int
    preprocess: PreprocessConfig
    fragment: FragmentConfig
    version: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def encoder_config(self) -> EncoderConfig:
        """An :class:`EncoderConfig` naming this backbone (HMVE fields at their defaults)."""
        return EncoderConfig(backbone=self.backbone_name, tiny_width=self.tiny_width)


def _atomic_torch_save(payload: dict[str, Any], p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_frame_encoder_checkpoint(
    path: str | Path,
    backbone: nn.Module,
    backbone_name: str,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    tiny_width: int = 32,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a frame-encoder checkpoint atomically (``torch.load(weights_only=True)``-safe).

    The file is ``{"format": "polypindex-frame-encoder/1", "backbone": {"backbone",
    "tiny_width"}, "feature_dim", "preprocess", "fragment", "state_dict", "version",
    "extra"}``; ``state_dict`` uses the key names of :func:`build_backbone`'s module, the
    same as ``HMVE.frame_encoder``.

    Returns:
        The frame-encoder version written.
    """
    config = EncoderConfig(backbone=backbone_name, tiny_width=tiny_width)
    reference, feature_dim = build_backbone(config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    if expected != got:
        raise ConfigError(
            f"the module given is not a {backbone_name!r} backbone (tiny_width={tiny_width}): "
            f"its state dict differs from build_backbone's"
        )
    version = frame_encoder_version(backbone, backbone_name, tiny_width)
    payload = {
        "format": FRAME_CHECKPOINT_FORMAT,
        "backbone": {"backbone": backbone_name, "tiny_width": tiny_width},
        "feature_dim": feature_dim,
        "preprocess": preprocess.to_dict(),
        "fragment": fragment.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in backbone.state_dict().items()},
        "version": version,
        "extra": json.loads(json.dumps(extra or {}, default=_jsonable)),
    }
    _atomic_torch_save(payload, Path(path))
    return version


def load_frame_encoder_checkpoint(path: str | Path) -> LoadedFrameEncoder:
    """Read a checkpoint written by :func:`save_frame_encoder_checkpoint`.

    Raises:
        ModelLoadError: missing or unreadable file, another format, weights that do not
            fit the stored backbone, or a version mismatch (corruption).
    """
    p = Path(path)
    payload = _read_checkpoint(
        p,
        "frame-encoder checkpoint",
        FRAME_CHECKPOINT_FORMAT,
        "write one with `polypindex pretrain-frames`",
    )
    try:
        name = str(payload["backbone"]["backbone"])
        tiny_width = int(payload["backbone"].get("tiny_width", 32))
        config = EncoderConfig(backbone=name, tiny_width=tiny_width)
        preprocess = PreprocessConfig.from_dict(payload["preprocess"])
        fragment = FragmentConfig.from_dict(payload["fragment"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"frame-encoder checkpoint {p} has an invalid config: {exc}") from exc
    backbone, feature_dim = build_backbone(config)
    try:
        backbone.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"frame-encoder checkpoint {p}: weights do not fit backbone {name!r}: {exc}"
        ) from exc
    backbone.eval()
    version = frame_encoder_version(backbone, name, tiny_width)
    if version != payload.get("version"):
        raise ModelLoadError(
            f"frame-encoder checkpoint {p}: stored version {payload.get('version')} but the "
            f"weights hash to {version} (corrupt or edited file)"
        )
    return LoadedFrameEncoder(
        backbone,
        name,
        tiny_width,
        feature_dim,
        preprocess,
        fragment,
        version,
        dict(payload.get("extra") or {}),
        p,
    )


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
