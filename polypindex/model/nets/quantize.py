"""Static INT8 quantisation of an exported encoder, calibrated on crops of the training data.

``polypindex export CKPT --out int8.onnx --quantize int8 --calibration-data DATA``
exports the FP32 model, then :func:`quantize_onnx` rewrites it with ONNX Runtime's
static quantiser: QDQ format (QuantizeLinear/DequantizeLinear pairs, which both ONNX
Runtime and OpenVINO run as INT8 kernels), per-channel symmetric INT8 weights, UINT8
activations whose ranges come from a :class:`CropCalibrationReader` that feeds real
crops — made by the one crop path, :func:`model.data.embedding.cached_sequences`, with the
model's own crop settings and frame rule — of tracklets of the calibration split.

The INT8 model is its own encoder: its metadata says ``polypindex.precision = "int8"``
and its version is the FP32 one plus ``+int8`` (:func:`model.runtime.onnx.int8_version`):
other weights, another identity, so its embeddings get their own index generation.
Its reference embeddings (:mod:`model.runtime.parity`) are computed again from the INT8 file. The report gives the cosine between
FP32 and INT8 embeddings of the calibration tracklets. Needs the ``onnx`` package
(the ``train`` extra), like the export itself; serving the INT8 file does not.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.core.files import atomic_path
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.embedding import cached_sequences, selected_frames
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.runtime.base import META_PREFIX, EncoderBase, int8_version
from polypindex.model.runtime.parity import REFERENCE_KEY, make_reference

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
DEFAULT_OP_TYPES = ("Conv", "Gemm")


@dataclass(frozen=True)
class QuantizeReport:
    """Result of :func:`quantize_onnx`.

    Attributes:
        path: the INT8 ``.onnx`` written.
        encoder_version: its version (the FP32 one + ``+int8``).
        fp32_version: the version of the model it was made from.
        calibration_tracklets: tracklets whose crops calibrated the activation ranges.
        min_cosine / mean_cosine: FP32 vs INT8 embedding cosine over those tracklets.
        seconds: wall time.
    """

    path: Path
    encoder_version: str
    fp32_version: str
    calibration_tracklets: int
    min_cosine: float
    mean_cosine: float
    seconds: float


def calibration_sequences(
    encoder: EncoderBase,
    data: str | Path,
    split: str = "train",
    tracklets: int = 16,
    max_frames: int = 16,
    crop_cache: str | Path | None = None,
    tracklet_config: TrackletConfig | None = None,
) -> list[np.ndarray]:
    """Normalised crop sequences ``(s, 3, H, W)`` of ``tracklets`` tracklets of a split,
    spread evenly over it, each cut to its first ``max_frames`` selected frames.

    Crops come from :func:`model.data.embedding.cached_sequences` with the encoder's crop
    settings and whole-tracklet frame rule, exactly as the indexer's.

    Raises:
        ConfigError: fewer than one tracklet asked for, or the split has none.
    """
    if tracklets < 1 or max_frames < 1:
        raise ConfigError(f"tracklets and max_frames must be >= 1, got {tracklets}, {max_frames}")
    every = load_coco_split(data, split).tracklets(tracklet_config)
    if not every:
        raise ConfigError(f"{data} ({split}) has no tracklets to calibrate on")
    picks = np.unique(np.linspace(0, len(every) - 1, num=min(tracklets, len(every))).astype(int))
    with tempfile.TemporaryDirectory() as tmp:
        cache = CropCache(crop_cache if crop_cache is not None else tmp, encoder.preprocess)
        out = []
        for i in picks.tolist():
            t = every[i]
            frames = selected_frames(len(t), encoder.fragment)[:max_frames]
            (crops,) = cached_sequences(t, [frames], cache)
            out.append(normalize(crops, encoder.preprocess))
    return out


class CropCalibrationReader:
    """ONNX Runtime's calibration reader over crop sequences: one ``{"frames": (1, s, 3, H, W)}``
    per sequence, then ``None`` (an ``onnxruntime.quantization.CalibrationDataReader``)."""

    def __init__(self, sequences: Sequence[np.ndarray]) -> None:
        self.sequences = list(sequences)
        self._items: Iterator[np.ndarray] = iter(self.sequences)

    def get_next(self) -> dict[str, np.ndarray] | None:
        seq = next(self._items, None)
        return None if seq is None else {"frames": np.ascontiguousarray(seq[None], np.float32)}

    def rewind(self) -> None:
        self._items = iter(self.sequences)


def _reference_runtime(path: Path) -> EncoderBase:
    """ONNX Runtime FP32 on the CPU: what calibrates, and what the reference
    embeddings of :mod:`model.runtime.parity` are computed on."""
    from polypindex.model.runtime.loader import load_encoder

    return load_encoder(path, providers=["CPUExecutionProvider"])


def _set_metadata(proto: Any, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_onnx(
    model: str | Path,
    out: str | Path,
    data: str | Path,
    split: str = "train",
    tracklets: int = 16,
    max_frames: int = 16,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    crop_cache: str | Path | None = None,
    tracklet_config: TrackletConfig | None = None,
) -> QuantizeReport:
    """Write an INT8 (QDQ, per-channel) copy of the FP32 encoder ``model`` to ``out``.

    Args:
        model: an FP32 ``.onnx`` from :func:`model.nets.export.export_onnx`.
        out: the INT8 ``.onnx`` to write (atomically, after the check).
        data: a COCO dataset folder with the calibration split.
        split: the calibration split (training data: ``train``).
        tracklets: calibration tracklets; max_frames: frames per calibration sequence.
        op_types: operator types quantised (default convolutions and dense layers: the
            backbone's work; attention matmuls stay FP32).
        crop_cache: crop cache folder (default: a temporary one).
        tracklet_config: how annotations are cut into tracklets (default docs/method.md#tracklets).

    Raises:
        ModelLoadError: ``model`` is not an FP32 encoder, or quantisation fails.
    """
    model = Path(model)
    fp32 = _reference_runtime(model)
    sequences = calibration_sequences(
        fp32, data, split, tracklets, max_frames, crop_cache, tracklet_config
    )
    calibration = {
        "data": Path(data).name,
        "split": split,
        "tracklets": len(sequences),
        "max_frames": max_frames,
    }
    return quantize_with_sequences(model, out, sequences, calibration, op_types)


def quantize_with_sequences(
    model: str | Path,
    out: str | Path,
    sequences: Sequence[np.ndarray],
    calibration: dict[str, Any],
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
) -> QuantizeReport:
    """:func:`quantize_onnx` with the calibration sequences given (normalised crops
    ``(s, 3, H, W)``); ``calibration`` describes them in the model's metadata. The speed
    benchmark calibrates a random-init model on random inputs this way."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    model, out = Path(model), Path(out)
    fp32 = _reference_runtime(model)
    if fp32.model_precision != "fp32":
        raise ModelLoadError(f"{model} is already {fp32.model_precision}; quantise the FP32 model")
    if not sequences:
        raise ConfigError("no calibration sequences")
    version = int8_version(fp32.base_version)
    with tempfile.TemporaryDirectory() as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # optional optimisation pass: quantise the raw model then
            logger.warning("quantisation pre-processing skipped: %s", exc)
            pre = model
        try:
            quantize_static(
                str(pre),
                str(quantized),
                CropCalibrationReader(sequences),  # type: ignore[arg-type]  # duck-typed reader
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(op_types),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as exc:
            raise ModelLoadError(f"INT8 quantisation of {model} failed: {exc}") from exc
        proto = onnx.load(str(quantized))
        metadata = dict(fp32.metadata)
        metadata.update(
            {
                f"{META_PREFIX}encoder_version": version,
                f"{META_PREFIX}precision": "int8",
                f"{META_PREFIX}quantization": json.dumps(
                    {
                        "from": fp32.base_version,
                        "method": "onnxruntime quantize_static, QDQ, per-channel, MinMax",
                        "op_types": list(op_types),
                        "calibration": calibration,
                    },
                    sort_keys=True,
                ),
            }
        )
        metadata.pop(f"{META_PREFIX}{REFERENCE_KEY}", None)  # the FP32 model's
        _set_metadata(proto, metadata)
        with atomic_path(out) as target:
            onnx.save_model(proto, str(target))
            int8 = _reference_runtime(target)
            reference = make_reference(int8.run_raw, int8.preprocess.im_size)
            _set_metadata(proto, {**metadata, f"{META_PREFIX}{REFERENCE_KEY}": reference.to_json()})
            onnx.save_model(proto, str(target))
            int8 = _reference_runtime(target)
            cos = np.asarray(
                [float(fp32.embed(s[None])[0] @ int8.embed(s[None])[0]) for s in sequences]
            )
    report = QuantizeReport(
        out,
        version,
        fp32.base_version,
        len(sequences),
        float(cos.min()),
        float(cos.mean()),
        time.perf_counter() - start,
    )
    logger.info("quantised %s -> %s (%s), cosine min %.4f", model, out, version, report.min_cosine)
    return report
