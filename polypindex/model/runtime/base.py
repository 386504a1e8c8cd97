"""What every encoder runtime shares (numpy only, no torch, no runtime library):
:class:`EncoderBase` reads the model's preprocessing, fragment rule, embedding size,
version and re-identification threshold from the ONNX metadata (written by
:mod:`model.nets.export`), never from local defaults, checks inputs, batches sequences and
returns L2-normalised float32 embeddings. A runtime only implements ``_run``:
:class:`model.runtime.onnx.OnnxEncoder` (ONNX Runtime, the default) and
:class:`model.runtime.openvino.OpenVinoEncoder` (OpenVINO, the fast path on CPUs with
BF16 matrix units). :func:`model.runtime.loader.load_encoder` chooses between them.

The encoder version names the weights and the preprocessing, never the runtime: every
runtime and precision serves the version written at export, a reduced precision only
after it has reproduced the model's reference embeddings (:mod:`model.runtime.parity`, checked
by :func:`model.runtime.loader.load_encoder`). An INT8 model is other weights and carries its
own version (``+int8``, :func:`int8_version`). Versions that older releases wrote with a
runtime suffix (``+bf16``, ``+fp16``) are read as their base (:func:`canonical_version`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.core.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.core.versions import canonical_version
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.embedding import CropStream, tracklet_fragments
from polypindex.model.data.preprocess import normalize
from polypindex.model.runtime.parity import REFERENCE_KEY, Reference
from polypindex.model.scoring.calibration import CALIBRATION_KEY, Calibration

ONNX_FORMAT = "polypindex-onnx/1"
META_PREFIX = "polypindex."
REQUIRED_METADATA = (
    "format",
    "encoder_version",
    "preprocess",
    "fragment",
    "embedding_dim",
    "reid_threshold",
)
INPUT_NAME = "frames"
OUTPUT_NAME = "embedding"
# The numeric precisions a runtime can compute in ("fp32": as exported). "int8" is a
# property of a quantised model (metadata ``polypindex.precision``), not a runtime setting.
RUNTIME_PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_PRECISIONS = ("fp32", "int8")


def int8_version(version: str) -> str:
    """The version of an INT8 model quantised from the FP32 model of ``version``: other
    weights, so another identity (``version + "+int8"``)."""
    return f"{canonical_version(version)}+int8"


def effective_precision(model_precision: str, runtime_precision: str) -> str:
    """What the embeddings are computed in: ``int8``, ``bf16``, ``int8+bf16``, ... ."""
    if runtime_precision == "fp32":
        return model_precision
    return (
        runtime_precision if model_precision == "fp32" else f"{model_precision}+{runtime_precision}"
    )


def check_threads(threads: int | None) -> None:
    """Raise :class:`ConfigError` unless ``threads`` is ``None`` or >= 1."""
    if threads is not None and threads < 1:
        raise ConfigError(f"intra_op_threads must be >= 1 (or None for the default), got {threads}")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (rows of zeros stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


class EncoderBase:
    """What every encoder runtime shares: the metadata, input checks, batching, tracklets.

    Args:
        path: the ``.onnx`` file.
        meta: its ``metadata_props``.
        input_names: the graph's input names (must be ``["frames"]``).
        runtime_precision: what the runtime computes in (``fp32``, ``bf16``, ``fp16``).

    Attributes:
        path: the model file.
        version: encoder version (embeddings of different versions never mix): the one
            written at export (``+int8`` for a quantised model), whatever the runtime.
        base_version: the same (kept for callers of older releases).
        precision: what the embeddings are computed in (:func:`effective_precision`).
        preprocess: crop settings to apply before :meth:`embed`.
        fragment: which frames of a tracklet are embedded (``fragment_length=-1``).
        dim: embedding size ``D``.
        reid_threshold: same-polyp threshold on ``sigmoid(cosine)``.
        reid_calibration: the fitted P(same polyp | cosine) and its threshold
            (``polypindex.reid_calibration``), or ``None`` for a model without one.
        reference: the model's reference embeddings (:mod:`model.runtime.parity`), or ``None``
            for a model exported before they existed.
        parity: the load-time parity check (:func:`model.runtime.loader.check_parity`), set by
            the loader; ``None`` until then.
        fallback_reason: why the runtime or precision asked for is not the one running
            (``None`` when it is).
        metadata: the raw ``polypindex.*`` metadata.

    Raises:
        ModelLoadError: missing or invalid metadata (the message names the file and the key).
    """

    runtime = "base"

    def __init__(
        self,
        path: Path,
        meta: Mapping[str, str],
        input_names: Sequence[str],
        runtime_precision: str = "fp32",
    ) -> None:
        self.path = Path(path)
        self.metadata = {k: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        for key in REQUIRED_METADATA:
            if META_PREFIX + key not in meta:
                raise ModelLoadError(
                    f"ONNX model {self.path} lacks metadata key {META_PREFIX + key!r}; "
                    f"export it with model.nets.export.export_onnx"
                )
        if meta[META_PREFIX + "format"] != ONNX_FORMAT:
            raise ModelLoadError(
                f"ONNX model {self.path} has format {meta[META_PREFIX + 'format']!r}, expected {ONNX_FORMAT!r}"
            )
        try:
            self.base_version: str = canonical_version(meta[META_PREFIX + "encoder_version"])
            self.preprocess = PreprocessConfig.from_dict(
                json.loads(meta[META_PREFIX + "preprocess"])
            )
            self.fragment = FragmentConfig.from_dict(json.loads(meta[META_PREFIX + "fragment"]))
            self.dim = int(meta[META_PREFIX + "embedding_dim"])
            self.reid_threshold = float(meta[META_PREFIX + "reid_threshold"])
            self.encoder_config: dict[str, Any] = json.loads(
                meta.get(META_PREFIX + "encoder_config", "{}")
            )
            # optional: models exported before calibration existed have none
            calibration = meta.get(META_PREFIX + CALIBRATION_KEY)
            self.reid_calibration: Calibration | None = (
                None if calibration is None else Calibration.from_json(calibration)
            )
            reference = meta.get(META_PREFIX + REFERENCE_KEY)
            self.reference: Reference | None = (
                None if reference is None else Reference.from_json(reference)
            )
        except (ValueError, TypeError, ConfigError, InvalidInputError) as exc:
            raise ModelLoadError(
                f"ONNX model {self.path} has invalid polypindex metadata: {exc}"
            ) from exc
        if not math.isfinite(self.reid_threshold):
            raise ModelLoadError(f"ONNX model {self.path}: reid_threshold is {self.reid_threshold}")
        self.model_precision = meta.get(META_PREFIX + "precision", "fp32")
        if self.model_precision not in MODEL_PRECISIONS:
            raise ModelLoadError(
                f"ONNX model {self.path} has precision {self.model_precision!r}, "
                f"expected one of {MODEL_PRECISIONS}"
            )
        if list(input_names) != [INPUT_NAME]:
            raise ModelLoadError(
                f"ONNX model {self.path} has inputs {list(input_names)}, expected [{INPUT_NAME!r}]"
            )
        self.runtime_precision = runtime_precision
        self.precision = effective_precision(self.model_precision, runtime_precision)
        self.version: str = self.base_version
        self.parity: dict[str, Any] | None = None
        self.fallback_reason: str | None = getattr(self, "fallback_reason", None)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The raw (not normalised) ``(b, D)`` output for checked float32 input ``x``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What runs the encoder: ``runtime``, ``provider`` (the device/provider used),
        ``precision``, ``encoder_version`` (the same for every runtime), the load-time
        ``parity`` check and, when the runtime fell back, ``fallback_reason``; shown by
        ``/healthz`` and the metrics."""
        info: dict[str, Any] = {
            "runtime": self.runtime,
            "provider": "unknown",
            "precision": self.precision,
            "encoder_version": self.version,
        }
        if self.parity is not None:
            info["parity"] = self.parity
        if self.fallback_reason:
            info["fallback_reason"] = self.fallback_reason
        return info

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """:meth:`embed` without the input checks, for trusted float32 input (the parity
        check's fixed inputs)."""
        return l2_normalize(np.asarray(self._run(np.ascontiguousarray(x, np.float32))))

    @property
    def expected_shape(self) -> str:
        s = self.preprocess.im_size
        return f"float32 [b, s, 3, {s}, {s}]"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, version={self.version!r}, dim={self.dim})"
        )

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Embed batches of normalised crops.

        Args:
            frames: float32 ``[b, s, 3, H, W]`` with ``H = W = preprocess.im_size``:
                the output of :func:`model.data.preprocess.normalize` (do not normalise again).

        Returns:
            float32 ``(b, D)``, L2-normalised rows.

        Raises:
            InvalidInputError: wrong type, dtype, rank, sizes or non-finite values.
        """
        if not isinstance(frames, np.ndarray):
            raise InvalidInputError(
                f"frames must be a numpy array {self.expected_shape}, got {type(frames).__name__}"
            )
        if not np.issubdtype(frames.dtype, np.floating):
            raise InvalidInputError(
                f"frames must be float32 {self.expected_shape} (normalised crops from model.data.preprocess), "
                f"got dtype {frames.dtype}"
            )
        s = self.preprocess.im_size
        if (
            frames.ndim != 5
            or frames.shape[2:] != (3, s, s)
            or frames.shape[0] < 1
            or frames.shape[1] < 1
        ):
            raise InvalidInputError(
                f"frames must have shape {self.expected_shape}, got {frames.shape}"
            )
        x = np.ascontiguousarray(frames, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InvalidInputError("frames contain NaN or infinite values")
        return l2_normalize(np.asarray(self._run(x), dtype=np.float32))

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Embed sequences of different lengths, batching those of equal length.

        No padding is used, so each row equals embedding that sequence alone.

        Args:
            seqs: N float32 arrays ``[s_i, 3, H, W]`` (normalised crops).
            batch_size: sequences per ONNX Runtime call.

        Returns:
            float32 ``(N, D)``, L2-normalised, in input order.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(seqs):
            if not isinstance(seq, np.ndarray) or seq.ndim != 4:
                got = seq.shape if isinstance(seq, np.ndarray) else type(seq).__name__
                s = self.preprocess.im_size
                raise InvalidInputError(f"sequence {i} must have shape [s, 3, {s}, {s}], got {got}")
            by_length.setdefault(seq.shape[0], []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                out[chunk] = self.embed(np.stack([seqs[i] for i in chunk]))
        return out

    def tracklet_frames(self, n_frames: int) -> list[np.ndarray]:
        """Indices of the frames embedded for a tracklet of ``n_frames`` (the indexing rule,
        :func:`model.data.embedding.tracklet_fragments`)."""
        return tracklet_fragments(n_frames, self.fragment)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Embed one tracklet from raw frames, exactly as the indexer does.

        Frames are chosen with this model's fragment rule (:meth:`tracklet_frames`),
        cropped by :class:`model.data.embedding.CropStream` with this model's preprocessing
        and normalised with :func:`model.data.preprocess.normalize`. If the rule yields
        several fragments, their embeddings are averaged and re-normalised.

        Args:
            images: the tracklet's frames, RGB uint8 ``(H, W, 3)`` each.
            boxes: ``(s, 4)`` ``[x, y, w, h]`` boxes, one per frame.

        Returns:
            float32 ``(D,)``, L2-normalised.
        """
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidInputError(f"boxes must have shape (s, 4) [x, y, w, h], got {boxes.shape}")
        if len(images) != len(boxes):
            raise InvalidInputError(f"{len(images)} frames but {len(boxes)} boxes")
        fragments = self.tracklet_frames(len(images))
        if not fragments:
            raise InvalidInputError(
                f"a tracklet of {len(images)} frame(s) gives no fragment under {self.fragment}"
            )
        stream = CropStream(
            [(np.arange(len(images)), boxes)],
            [fragments],
            lambda ids: ((i, images[i]) for i in ids),
            self.preprocess,
        )
        ((_, sequences),) = [done for per_frame in stream for done in per_frame]
        emb = self.embed(np.stack([normalize(seq, self.preprocess) for seq in sequences]))
        return emb[0] if len(emb) == 1 else l2_normalize(emb.mean(axis=0))
