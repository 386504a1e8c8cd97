"""Import a checkpoint of the reference implementation (the ``polypsense`` package of the
paper's public code) into a PolypIndex encoder checkpoint (docs/training.md#importing-a-
reference-checkpoint).

The reference's HMVE (``HierarchicalMVEEncoder``, a LightningModule) names its weights

- ``mve.sfe.backbone.*``: the torchvision ResNet-18/50 frame encoder (its ``fc`` removed),
- ``mve.adapter.{weight,bias}``: the linear adapter to ``d_model``,
- ``mve.feature_norm.{weight,bias}``: the adapter's LayerNorm (``use_feature_norm``),
- ``mve.cls_token``: the learned CLS token ``[1, 1, d_model]``,
- ``mve.encoder.layers.{i}.*``: ``nn.TransformerEncoderLayer`` weights (batch-first),
- ``mve.encoder.norm.*``: a final LayerNorm (``use_encoder_norm``),
- ``projector.*``: the training-only projection head.

They map one to one onto :class:`model.nets.hmve.HMVE` (``frame_encoder.*``, ``adapter.*``,
``adapter_norm.*``, ``cls_token``, ``transformer.layers.{i}.*``); the projector is dropped
(ours is never exported either). A final encoder norm has no counterpart here, so such a
checkpoint is refused. The architecture is read from the weights' shapes, and the number
of attention heads (which no shape shows) from the checkpoint's ``hyper_parameters``
(``n_heads``) or the caller. The crop and fragment settings come from a training preset
(default ``paper``, the reference's 232 px crops and fragments of 8 frames at stride 4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polypindex.model.core.errors import ModelLoadError
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.nets.hmve import HMVE, EncoderConfig
from polypindex.training.train_config import load_train_config

REFERENCE_PREFIX = "mve."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_reference_checkpoint` did.

    Attributes:
        destination: the PolypIndex checkpoint written.
        encoder_version: its version (``hmve-…``).
        encoder_config: the architecture read from the reference's weights.
        mapped: reference key → our key, for every tensor taken.
        dropped: reference keys left out (the projector, loss parameters).
    """

    destination: Path
    encoder_version: str
    encoder_config: EncoderConfig
    mapped: dict[str, str]
    dropped: list[str]


def read_reference_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and hyper-parameters of a reference checkpoint: a Lightning ``.ckpt``
    (``{"state_dict": ..., "hyper_parameters": ...}``) or a bare state dict.

    Raises:
        ModelLoadError: missing or unreadable file, or no state dict in it.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"reference checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "unreadable"
        raise ModelLoadError(
            f"cannot read reference checkpoint {p} (a torch/Lightning file loadable with "
            f"weights_only=True is expected): {exc}"
        ) from exc
    hparams: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        raw_hparams = obj.get("hyper_parameters")
        hparams = dict(raw_hparams) if isinstance(raw_hparams, Mapping) else {}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"reference checkpoint {p} holds no state dict (a mapping of names to tensors, "
            f"optionally under 'state_dict')"
        )
    return {_unwrap(str(k)): v for k, v in obj.items()}, hparams


def _unwrap(key: str) -> str:
    """Strip DDP / torch.compile wrappers (``module.``, ``_orig_mod.``) before ``mve.``."""
    changed = True
    while changed and not key.startswith((REFERENCE_PREFIX, "projector.")):
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def map_reference_key(key: str) -> str | None:
    """Our HMVE key for a reference key; ``None`` for the weights we drop (projector,
    loss). Raises ModelLoadError for a key of the reference's encoder we cannot hold."""
    if not key.startswith(REFERENCE_PREFIX):
        return None
    rest = key[len(REFERENCE_PREFIX) :]
    if rest.startswith("sfe.backbone."):
        return "frame_encoder." + rest[len("sfe.backbone.") :]
    if rest.startswith("adapter."):
        return rest
    if rest.startswith("feature_norm."):
        return "adapter_norm." + rest[len("feature_norm.") :]
    if rest == "cls_token":
        return rest
    if rest.startswith("encoder.norm."):
        raise ModelLoadError(
            f"{key}: the reference model was trained with use_encoder_norm (a final LayerNorm "
            f"after the Transformer), which the PolypIndex HMVE does not have"
        )
    if _LAYER.match(rest):
        return "transformer." + rest[len("encoder.") :]
    raise ModelLoadError(f"unknown key {key!r} in the reference's encoder (mve.*)")


def infer_encoder_config(
    state: Mapping[str, Tensor], hparams: Mapping[str, Any], n_heads: int | None = None
) -> EncoderConfig:
    """The :class:`EncoderConfig` of reference weights (shapes), hyper-parameters and the
    caller's ``n_heads`` (which wins; else ``hparams["n_heads"]``, else the reference's
    default 8).

    Raises:
        ModelLoadError: not an HMVE of the reference (no ``mve.`` weights, an unknown
            backbone), or hyper-parameters that contradict the weights.
    """
    try:
        adapter = state["mve.adapter.weight"]
        cls = state["mve.cls_token"]
    except KeyError as exc:
        raise ModelLoadError(
            f"not a reference HMVE checkpoint: no {exc.args[0]!r} (found e.g. {sorted(state)[:3]})"
        ) from exc
    if "mve.sfe.backbone.layer1.0.conv3.weight" in state:
        backbone = "resnet50"
    elif "mve.sfe.backbone.layer1.0.conv1.weight" in state:
        backbone = "resnet18"
    else:
        raise ModelLoadError("reference checkpoint: the frame encoder is not a torchvision ResNet")
    layers = sorted(
        {int(m.group(1)) for k in state if (m := _LAYER.match(k.removeprefix(REFERENCE_PREFIX)))}
    )
    if not layers or layers != list(range(len(layers))):
        raise ModelLoadError(f"reference checkpoint: Transformer layers {layers} are not 0..n-1")
    d_model = int(adapter.shape[0])
    feedforward = int(state["mve.encoder.layers.0.linear1.weight"].shape[0])
    heads = n_heads if n_heads is not None else int(hparams.get("n_heads") or 8)
    expected = {"resnet18": 512, "resnet50": 2048}[backbone]
    checks = {
        "d_in": (int(adapter.shape[1]), hparams.get("d_in"), expected),
        "d_model": (d_model, hparams.get("d_model"), int(cls.shape[-1])),
        "n_layers": (len(layers), hparams.get("n_layers"), None),
        "d_feedforward": (feedforward, hparams.get("d_feedforward"), None),
    }
    for name, (found, stated, implied) in checks.items():
        for other in (stated, implied):
            if other is not None and int(other) != found:
                raise ModelLoadError(
                    f"reference checkpoint: {name} is {found} in the weights but {other} in its "
                    f"hyper-parameters or backbone"
                )
    stated_arch = hparams.get("backbone_arch")
    if stated_arch is not None and stated_arch != backbone:
        raise ModelLoadError(
            f"reference checkpoint: weights of a {backbone}, hyper-parameters say {stated_arch}"
        )
    try:
        return EncoderConfig(
            backbone=backbone,
            d_model=d_model,
            n_layers=len(layers),
            n_heads=heads,
            dim_feedforward=feedforward,
            dropout=float(hparams.get("dropout", 0.1)),
            adapter_layer_norm="mve.feature_norm.weight" in state,
        )
    except Exception as exc:
        raise ModelLoadError(f"reference checkpoint: invalid architecture: {exc}") from exc


def convert_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename reference weights to ours: ``(our state dict, mapping, dropped keys)``."""
    ours: dict[str, Tensor] = {}
    mapped: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in state.items():
        target = map_reference_key(key)
        if target is None:
            dropped.append(key)
            continue
        ours[target] = value.detach().clone()
        mapped[key] = target
    return ours, mapped, sorted(dropped)


def import_reference_checkpoint(
    src: str | Path,
    dst: str | Path,
    preset: str = "paper",
    n_heads: int | None = None,
    reid_threshold: float | None = None,
) -> ImportReport:
    """Convert the reference checkpoint ``src`` into a PolypIndex encoder checkpoint ``dst``.

    Args:
        src: a reference ``.ckpt`` (Lightning) or a bare state dict of its HMVE.
        dst: the ``encoder.pt`` to write (``polypindex export`` reads it).
        preset: the training preset whose crop and fragment settings are stored.
        n_heads: attention heads (default: the checkpoint's ``hyper_parameters``, else 8).
        reid_threshold: the same-polyp probability threshold to store (default none:
            export then stores its default and warns).

    Raises:
        ModelLoadError: unreadable source, weights we cannot hold, or weights that do not
            fit the inferred architecture.
    """
    state, hparams = read_reference_checkpoint(src)
    config = infer_encoder_config(state, hparams, n_heads)
    ours, mapped, dropped = convert_state_dict(state)
    encoder = HMVE(config, load_weights=False)
    try:
        encoder.load_state_dict(ours, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"reference checkpoint {src}: the weights do not fit the inferred architecture "
            f"{config.to_dict()}: {exc}"
        ) from exc
    settings = load_train_config(preset)
    extra: dict[str, Any] = {
        "config_name": f"imported-reference-{config.backbone}",
        "imported_from": str(src),
        "reference_hyper_parameters": {
            k: v for k, v in hparams.items() if isinstance(v, str | int | float | bool)
        },
        "settings_preset": preset,
    }
    if reid_threshold is not None:
        extra["reid_threshold"] = float(reid_threshold)
    version = save_encoder_checkpoint(
        dst, encoder.eval(), config, settings.preprocess, settings.fragment, extra
    )
    return ImportReport(Path(dst), version, config, mapped, dropped)
