"""Encoder versions and the checkpoint format of the HMVE (docs/method.md#encoder-version) and
of frame encoders.

The architecture lives in :mod:`model.nets.hmve`; its public names are importable from
here too. The checkpoint written by :func:`save_encoder_checkpoint` carries the
architecture, the preprocessing and the fragment settings, so export and evaluation
never fall back to their own defaults.

A version (``hmve-…``, ``frames-…``) hashes the architecture, the weights and the
embedding settings (crop settings and whole-tracklet frame rule,
:func:`model.data.embedding.embedding_settings`), so embeddings made with other crops or
frames never share an index generation. Checkpoints written before the settings were
hashed keep their stored version: the loader accepts either hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.core.files import atomic_path
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.embedding import embedding_settings
from polypindex.model.nets.hmve import (
    HMVE,
    EncoderConfig,
    build_backbone,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FRAME_CHECKPOINT_FORMAT",
    "LoadedEncoder",
    "LoadedFrameEncoder",
    "encoder_version",
    "frame_encoder_version",
    "load_encoder_checkpoint",
    "load_frame_encoder_checkpoint",
    "save_encoder_checkpoint",
    "save_frame_encoder_checkpoint",
]

CHECKPOINT_FORMAT = "polypindex-encoder/1"
FRAME_CHECKPOINT_FORMAT = "polypindex-frame-encoder/1"


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else b""


def _version(
    kind: str,
    architecture: str,
    module: nn.Module,
    preprocess: PreprocessConfig | None,
    fragment: FragmentConfig | None,
) -> str:
    """``<kind>-<12 hex>``: sha256 over ``architecture``, the embedding settings (when
    both are given) and every state-dict tensor's name, dtype, shape and bytes, in name
    order. Without settings it is the hash of checkpoints written before they counted."""
    h = hashlib.sha256(architecture.encode())
    if preprocess is not None and fragment is not None:
        h.update(b"|settings|" + embedding_settings(preprocess, fragment).encode())
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return f"{kind}-{h.hexdigest()[:12]}"


def encoder_version(
    encoder: HMVE,
    config: EncoderConfig,
    preprocess: PreprocessConfig | None = None,
    fragment: FragmentConfig | None = None,
) -> str:
    """A stable id of architecture + weights + embedding settings: ``hmve-<backbone>-<12 hex>``.

    The hash covers the config JSON (without ``backbone_weights``, a machine-local path
    that the weights already capture), the crop settings and whole-tracklet frame rule
    (when ``preprocess`` and ``fragment`` are given, as for every new checkpoint) and
    every state-dict tensor.

    This is the model's identity on every runtime and precision (a reduced precision
    serves it after the parity check of :mod:`model.runtime.parity`); only an INT8 export, other
    weights, carries its own (``+int8``, :func:`model.runtime.onnx.int8_version`,
    docs/runtimes.md).
    """
    architecture = json.dumps(
        dataclasses.replace(config, backbone_weights=None).to_dict(), sort_keys=True
    )
    return _version(f"hmve-{config.backbone}", architecture, encoder, preprocess, fragment)


def frame_encoder_version(
    backbone: nn.Module,
    backbone_name: str,
    tiny_width: int,
    preprocess: PreprocessConfig | None = None,
    fragment: FragmentConfig | None = None,
) -> str:
    """A stable id of a frame encoder's architecture + weights + embedding settings:
    ``frames-<backbone>-<12 hex>`` (settings as in :func:`encoder_version`)."""
    architecture = json.dumps([backbone_name, tiny_width])
    return _version(f"frames-{backbone_name}", architecture, backbone, preprocess, fragment)


def _check_version(p: Path, what: str, stored: Any, hashes: Callable[[bool], str]) -> str:
    """The stored version when the weights hash to it, with the embedding settings
    (``hashes(True)``) or, for older files, without (``hashes(False)``)."""
    current = hashes(True)
    if stored == current or (isinstance(stored, str) and stored == hashes(False)):
        return str(stored)
    raise ModelLoadError(
        f"{what} {p}: stored version {stored} but the weights hash to "
        f"{current} (corrupt or edited file)"
    )


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


def _save(p: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint payload atomically (fsynced temporary file, then rename)."""
    with atomic_path(p) as tmp:
        torch.save(payload, tmp)


def _payload(
    fmt: str,
    module: nn.Module,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The keys every checkpoint has: format, settings, CPU weights, JSON-compatible extra."""
    return {
        "format": fmt,
        "preprocess": preprocess.to_dict(),
        "fragment": fragment.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()},
        "extra": json.loads(json.dumps(extra or {}, default=_jsonable)),
    }


def _read_settings(payload: dict[str, Any]) -> tuple[PreprocessConfig, FragmentConfig]:
    return PreprocessConfig.from_dict(payload["preprocess"]), FragmentConfig.from_dict(
        payload["fragment"]
    )


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
        The encoder version written (it covers ``preprocess`` and ``fragment``).
    """
    payload = _payload(CHECKPOINT_FORMAT, encoder, preprocess, fragment, extra)
    threshold = payload["extra"].get("reid_threshold", 0.0)
    if not isinstance(threshold, int | float):
        raise ConfigError(f"extra['reid_threshold'] must be a number, got {threshold!r}")
    version = encoder_version(encoder, encoder_config, preprocess, fragment)
    payload.update(encoder_config=encoder_config.to_dict(), encoder_version=version)
    _save(Path(path), payload)
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
        "write it with model.nets.encoder.save_encoder_checkpoint",
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
        preprocess, fragment = _read_settings(payload)
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
    version = _check_version(
        p,
        "encoder checkpoint",
        payload["encoder_version"],
        lambda settings: encoder_version(
            encoder, config, *((preprocess, fragment) if settings else (None, None))
        ),
    )
    return LoadedEncoder(
        encoder, config, preprocess, fragment, version, dict(payload.get("extra") or {}), p
    )


# --- Frame encoders on their own (MSN pretraining, the frame-mean baseline;
# docs/method.md#frame-pretraining) ---


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
    extra: dict[str, Any]
    path: Path

    @property
    def encoder_config(self) -> EncoderConfig:
        """An :class:`EncoderConfig` naming this backbone (HMVE fields at their defaults)."""
        return EncoderConfig(backbone=self.backbone_name, tiny_width=self.tiny_width)


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
        The frame-encoder version written (it covers ``preprocess`` and ``fragment``).
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
    version = frame_encoder_version(backbone, backbone_name, tiny_width, preprocess, fragment)
    payload = _payload(FRAME_CHECKPOINT_FORMAT, backbone, preprocess, fragment, extra)
    payload.update(
        backbone={"backbone": backbone_name, "tiny_width": tiny_width},
        feature_dim=feature_dim,
        version=version,
    )
    _save(Path(path), payload)
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
        preprocess, fragment = _read_settings(payload)
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
    version = _check_version(
        p,
        "frame-encoder checkpoint",
        payload.get("version"),
        lambda settings: frame_encoder_version(
            backbone, name, tiny_width, *((preprocess, fragment) if settings else (None, None))
        ),
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
