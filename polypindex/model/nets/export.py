"""Export an encoder checkpoint to ONNX, with its metadata, and check parity with torch.

The ONNX graph computes ``HMVE.embed``: input ``frames`` float32
``[batch, seq, 3, H, W]`` (already cropped and normalised, see
``model.data.preprocess``), output ``embedding`` float32 ``[batch, d_model]`` (the raw
CLS output; :class:`model.runtime.onnx.OnnxEncoder` L2-normalises it). Batch and
sequence length are dynamic.

The model carries everything a consumer needs in ``metadata_props``:
``polypindex.format``, ``polypindex.encoder_version``, ``polypindex.preprocess``,
``polypindex.fragment`` (the indexing rule: training's stride and max_frames,
``fragment_length=-1``), ``polypindex.encoder_config``,
``polypindex.embedding_dim`` and ``polypindex.reid_threshold``, and
``polypindex.reid_calibration`` when training fitted one (:mod:`model.scoring.calibration`).

:func:`export_frame_mean_onnx` exports the frame-mean baseline
(:class:`model.nets.encoder.FrameMeanEncoder`) from a frame-encoder checkpoint (MSN
pretraining) with the same input/output contract and metadata keys, so
:class:`model.runtime.onnx.OnnxEncoder`, the indexer and the benchmarks use it unchanged.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from polypindex.model.core.errors import InvalidInputError, ModelLoadError
from polypindex.model.core.files import atomic_path
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, whole_tracklet
from polypindex.model.nets.encoder import (
    LoadedEncoder,
    LoadedFrameEncoder,
    load_encoder_checkpoint,
    load_frame_encoder_checkpoint,
)
from polypindex.model.nets.hmve import HMVE, FrameMeanEncoder
from polypindex.model.runtime.parity import REFERENCE_KEY, make_reference
from polypindex.model.scoring.calibration import CALIBRATION_KEY, Calibration

logger = logging.getLogger(__name__)

ONNX_FORMAT = "polypindex-onnx/1"
META_PREFIX = "polypindex."
PARITY_ATOL = 1e-4
DEFAULT_REID_THRESHOLD = 0.6
INPUT_NAME = "frames"
OUTPUT_NAME = "embedding"
# Example used for tracing: batch >= 2 and seq >= 3 so neither dimension is specialised.
EXAMPLE_BATCH = 2
EXAMPLE_SEQ = 3
# Parity inputs: sizes different from the example, to catch a frozen dimension.
PARITY_SHAPES = ((3, 5), (1, 9))


@dataclass(frozen=True)
class ExportReport:
    """Result of :func:`export_onnx`.

    Attributes:
        path: the ONNX file written.
        encoder_version: the exported encoder's version.
        max_abs_diff: max |torch − ONNX Runtime| over the parity inputs (NaN if not checked).
        opset: the ONNX opset of the default domain in the written model.
        seconds: wall time of export + check.
    """

    path: Path
    encoder_version: str
    max_abs_diff: float
    opset: int
    seconds: float


class _Embed(nn.Module):
    """Wraps ``encoder.embed`` (HMVE or frame-mean) as the module's forward, for the exporter."""

    def __init__(self, encoder: HMVE | FrameMeanEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: Tensor) -> Tensor:
        return self.encoder.embed(frames)


class ExportOptions(TypedDict, total=False):
    """The options of :func:`export_onnx` and :func:`export_frame_mean_onnx`.

    Attributes:
        opset: ONNX opset; absent or ``None`` lets the exporter choose.
        reid_threshold: same-polyp probability threshold to store; default the
            checkpoint's ``extra["reid_threshold"]``, else 0.6 (with a warning).
        check: run the parity check (default ``True``): torch vs ONNX Runtime (CPU) on
            two random inputs, ``(b, s) = (3, 5)`` and ``(1, 9)``, sizes unlike the trace
            example; fails above ``PARITY_ATOL = 1e-4`` max absolute difference.
    """

    opset: int | None
    reid_threshold: float | None
    check: bool


def _resolve_threshold(
    extra: dict[str, Any], given: float | None, what: str, path: object
) -> float:
    if given is not None:
        value = float(given)
    elif isinstance(extra.get("reid_threshold"), int | float):
        value = float(extra["reid_threshold"])
    else:
        logger.warning(
            "%s %s has no reid_threshold and none was given; storing the default %.2f",
            what,
            path,
            DEFAULT_REID_THRESHOLD,
        )
        value = DEFAULT_REID_THRESHOLD
    if not 0.0 <= value <= 1.0 or value != value:
        raise ModelLoadError(f"reid_threshold must be a probability in [0, 1], got {value}")
    return value


def resolve_reid_threshold(loaded: LoadedEncoder, reid_threshold: float | None = None) -> float:
    """The threshold to store: the argument, else the checkpoint's ``extra["reid_threshold"]``,
    else :data:`DEFAULT_REID_THRESHOLD` (with a warning)."""
    return _resolve_threshold(loaded.extra, reid_threshold, "checkpoint", loaded.path)


def _metadata(
    version: str,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    encoder_config: str,
    dim: int,
    reid_threshold: float,
) -> dict[str, str]:
    """The ``metadata_props`` of every exported model (all values are strings); the
    fragment rule stored is the whole-tracklet one (:func:`model.data.config.whole_tracklet`)."""
    return {
        f"{META_PREFIX}format": ONNX_FORMAT,
        f"{META_PREFIX}encoder_version": version,
        f"{META_PREFIX}preprocess": preprocess.to_json(),
        f"{META_PREFIX}fragment": whole_tracklet(fragment).to_json(),
        f"{META_PREFIX}encoder_config": encoder_config,
        f"{META_PREFIX}embedding_dim": str(dim),
        f"{META_PREFIX}reid_threshold": repr(float(reid_threshold)),
    }


def calibration_metadata(extra: dict[str, Any]) -> dict[str, str]:
    """``{"polypindex.reid_calibration": JSON}`` when the checkpoint's ``extra`` holds a
    fitted calibration (:func:`model.scoring.calibration.fit_calibration`), else ``{}``.

    Raises:
        ModelLoadError: the stored calibration is malformed.
    """
    stored = extra.get(CALIBRATION_KEY)
    if stored is None:
        return {}
    try:
        return {f"{META_PREFIX}{CALIBRATION_KEY}": Calibration.from_dict(stored).to_json()}
    except InvalidInputError as exc:
        raise ModelLoadError(f"checkpoint has an invalid {CALIBRATION_KEY}: {exc}") from exc


# What the checkpoint's ``extra`` says about how the model was trained, copied into the
# ONNX metadata (``polypindex.training``) so that ``polypindex info`` can say which
# numeric precision built it (bf16-mixed and 32-true runs give different models).
TRAINING_KEYS = (
    "precision",
    "channels_last",
    "config_name",
    "seed",
    "loss",
    "sampler",
    "epochs_trained",
    "best_epoch",
    "best_val_map",
    "world_size",
)


def training_metadata(extra: dict[str, Any]) -> dict[str, str]:
    """``{"polypindex.training": JSON}`` of the :data:`TRAINING_KEYS` the checkpoint
    records (``precision`` is ``"unknown"`` for a checkpoint that does not say)."""
    info = {k: extra[k] for k in TRAINING_KEYS if k in extra}
    info.setdefault("precision", "unknown")
    return {f"{META_PREFIX}training": json.dumps(info, sort_keys=True, default=str)}


def build_metadata(loaded: LoadedEncoder, reid_threshold: float) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX model (all values are strings),
    with the calibration of :func:`calibration_metadata` when the checkpoint has one
    and the training record of :func:`training_metadata`."""
    return {
        **training_metadata(loaded.extra),
        **_metadata(
            loaded.encoder_version,
            loaded.preprocess,
            loaded.fragment,
            loaded.encoder_config.to_json(),
            loaded.encoder_config.d_model,
            reid_threshold,
        ),
        **calibration_metadata(loaded.extra),
    }


def _export_proto(
    encoder: HMVE | FrameMeanEncoder, im_size: int, opset: int | None
) -> onnx.ModelProto:
    example = torch.randn(
        EXAMPLE_BATCH, EXAMPLE_SEQ, 3, im_size, im_size, generator=torch.Generator().manual_seed(0)
    )
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Embed(encoder).eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"frames": {0: batch, 1: seq}},
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise ModelLoadError("torch.onnx.export returned no program")
    return program.model_proto


def _check_dynamic(proto: onnx.ModelProto) -> None:
    """Raise if the batch or sequence dimension of the input got frozen to a number."""
    (inp,) = [i for i in proto.graph.input if i.name == INPUT_NAME]
    dims = inp.type.tensor_type.shape.dim
    frozen = [name for name, d in zip(("batch", "seq"), dims[:2], strict=True) if not d.dim_param]
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    if out_dims and not out_dims[0].dim_param:
        frozen.append("output batch")
    if frozen:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ModelLoadError(
            f"ONNX export froze dimension(s) {frozen} of {INPUT_NAME} (shape {shape})"
        )


def _opset(proto: onnx.ModelProto) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def check_parity(
    encoder: HMVE | FrameMeanEncoder, onnx_path: Path, im_size: int, seed: int = 0
) -> float:
    """Max |torch ``embed`` − ONNX Runtime| over inputs of shapes :data:`PARITY_SHAPES`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, s in PARITY_SHAPES:
        x = torch.randn(b, s, 3, im_size, im_size, generator=gen)
        with torch.no_grad():
            expected = encoder.embed(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise ModelLoadError(
                f"ONNX output shape {got.shape} != torch {expected.shape} for input b={b}, s={s}"
            )
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def add_reference_embeddings(proto: onnx.ModelProto, path: Path, im_size: int) -> None:
    """Embed the fixed reference inputs with ONNX Runtime FP32 on the CPU (the reference
    runtime) from the model saved at ``path``, add them to ``proto``'s metadata
    (``polypindex.reference_embeddings``, :mod:`model.runtime.parity`) and save it there again."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return np.asarray(out)

    entry = proto.metadata_props.add()
    entry.key = f"{META_PREFIX}{REFERENCE_KEY}"
    entry.value = make_reference(run, im_size).to_json()
    onnx.save_model(proto, str(path))


_Prepared = tuple[HMVE | FrameMeanEncoder, dict[str, str], int]


def _export(
    checkpoint: Path,
    out: Path,
    prepare: Callable[[Path, float | None], _Prepared],
    options: ExportOptions,
) -> ExportReport:
    """Load with ``prepare`` (→ encoder, metadata, crop size), then trace, check dynamic
    dims, add metadata, check parity and write atomically."""
    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    encoder, metadata, im_size = prepare(checkpoint, options.get("reid_threshold"))
    check = options.get("check", True)
    try:
        proto = _export_proto(encoder, im_size, options.get("opset"))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"ONNX export of {checkpoint} failed: {exc}") from exc
    _check_dynamic(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    version = metadata[f"{META_PREFIX}encoder_version"]
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        diff = check_parity(encoder, tmp, im_size) if check else float("nan")
        if check and not diff <= PARITY_ATOL:
            raise ModelLoadError(
                f"ONNX export of {checkpoint}: torch vs ONNX Runtime max |diff| = {diff:.3g} "
                f"exceeds {PARITY_ATOL:g}"
            )
        add_reference_embeddings(proto, tmp, im_size)
    report = ExportReport(out, version, diff, _opset(proto), time.perf_counter() - start)
    logger.info("exported %s (%s), parity max |diff| %.2e", out, version, diff)
    return report


def _prepare_hmve(checkpoint: Path, reid_threshold: float | None) -> _Prepared:
    loaded = load_encoder_checkpoint(checkpoint)
    metadata = build_metadata(loaded, resolve_reid_threshold(loaded, reid_threshold))
    return loaded.encoder.eval(), metadata, loaded.preprocess.im_size


def export_onnx(checkpoint: Path, out: Path, **options: Unpack[ExportOptions]) -> ExportReport:
    """Export an encoder checkpoint to ONNX with dynamic batch and sequence length.

    The graph is ``HMVE.embed`` (raw CLS output, not normalised); the input is
    the already-normalised crops, so consumers must not normalise twice. The
    file is written atomically and only after the checks pass.

    Args:
        checkpoint: a file written by :func:`model.nets.encoder.save_encoder_checkpoint`.
        out: the ``.onnx`` path to write.
        options: ``opset``, ``reid_threshold``, ``check``: see :class:`ExportOptions`.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ModelLoadError: unreadable checkpoint, export failure, a frozen dynamic
            dimension, or a parity difference above ``PARITY_ATOL``.
    """
    return _export(checkpoint, out, _prepare_hmve, options)


def frame_mean_version(loaded: LoadedFrameEncoder) -> str:
    """``framemean-<backbone>-<12 hex>``: the frame encoder's hash (which covers its
    crop settings and frame rule), marked as frame-mean."""
    return "framemean-" + loaded.version.removeprefix("frames-")


def build_frame_mean_metadata(loaded: LoadedFrameEncoder, reid_threshold: float) -> dict[str, str]:
    """The frame-mean model's ``metadata_props``: the keys of :func:`build_metadata`;
    ``encoder_config`` describes the frame-mean encoder instead of an HMVE."""
    encoder_config = {
        "kind": "frame_mean",
        "backbone": loaded.backbone_name,
        "tiny_width": loaded.tiny_width,
        "feature_dim": loaded.feature_dim,
        "frame_encoder_version": loaded.version,
        "pretraining": loaded.extra.get("kind", "unknown"),
        "pretraining_epochs": loaded.extra.get("epoch"),
    }
    return training_metadata(loaded.extra) | _metadata(
        frame_mean_version(loaded),
        loaded.preprocess,
        loaded.fragment,
        json.dumps(encoder_config, sort_keys=True),
        loaded.feature_dim,
        reid_threshold,
    )


def _prepare_frame_mean(checkpoint: Path, reid_threshold: float | None) -> _Prepared:
    loaded = load_frame_encoder_checkpoint(checkpoint)
    threshold = _resolve_threshold(loaded.extra, reid_threshold, "frame encoder", checkpoint)
    encoder = FrameMeanEncoder(loaded.backbone, loaded.feature_dim).eval()
    return encoder, build_frame_mean_metadata(loaded, threshold), loaded.preprocess.im_size


def export_frame_mean_onnx(
    checkpoint: Path, out: Path, **options: Unpack[ExportOptions]
) -> ExportReport:
    """Export the frame-mean baseline of a frame-encoder checkpoint (``msn.pt``) to ONNX.

    The graph embeds every frame with the pretrained backbone, L2-normalises each
    frame feature and averages over time (:class:`model.nets.encoder.FrameMeanEncoder`): input
    ``frames`` ``[batch, seq, 3, H, W]``, output ``embedding`` ``[batch, feature_dim]``,
    both dynamic in batch and sequence, metadata as :func:`export_onnx` writes it (the
    checkpoint's crop settings and stride), and the same parity check.

    Args:
        checkpoint: written by :func:`model.nets.encoder.save_frame_encoder_checkpoint`.
        out: the ``.onnx`` path to write.
        options: ``opset``, ``reid_threshold``, ``check``: see :class:`ExportOptions`.

    Raises:
        ModelLoadError: unreadable checkpoint, export failure or a parity failure.
    """
    return _export(checkpoint, out, _prepare_frame_mean, options)
