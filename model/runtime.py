"""Encoder runtimes for the exported ONNX model: the serving path (numpy only, no torch).

:class:`EncoderBase` reads the model's preprocessing, fragment rule, embedding size,
version and re-identification threshold from the ONNX metadata (written by
:mod:`model.export`), never from local defaults, checks inputs, batches sequences and
returns L2-normalised float32 embeddings. A runtime only implements ``_run``:
:class:`OnnxEncoder` (ONNX Runtime, the default) here and
:class:`model.openvino_runtime.OpenVinoEncoder` (OpenVINO, the fast path on CPUs with
BF16 matrix units). :func:`model.backends.load_encoder` chooses between them.

The encoder version names the weights and the preprocessing, never the runtime: every
runtime and precision serves the version written at export, a reduced precision only
after it has reproduced the model's reference embeddings (:mod:`model.parity`, checked
by :func:`model.backends.load_encoder`). An INT8 model is other weights and carries its
own version (``+int8``, :func:`int8_version`). Versions that older releases wrote with a
runtime suffix (``+bf16``, ``+fp16``) are read as their base (:func:`canonical_version`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from polypindex.model.calibration import CALIBRATION_KEY, Calibration
from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.embedding import CropStream, tracklet_fragments
from polypindex.model.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.parity import REFERENCE_KEY, Reference
from polypindex.model.preprocess import normalize
from polypindex.model.versions import canonical_version

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
logger = logging.getLogger(__name__)
INPUT_NAME = "frames"
OUTPUT_NAME = "embedding"
# The numeric precisions a runtime can compute in ("fp32": as exported). "int8" is a
# property of a quantised model (metadata ``polypindex.precision``), not a runtime setting.
RUNTIME_PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_PRECISIONS = ("fp32", "int8")
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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


def _session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if intra_op_threads is not None:
        check_threads(intra_op_threads)
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


def check_threads(threads: int | None) -> None:
    """Raise :class:`ConfigError` unless ``threads`` is ``None`` or >= 1."""
    if threads is not None and threads < 1:
        raise ConfigError(f"intra_op_threads must be >= 1 (or None for the default), got {threads}")


ProviderEntry = str | tuple[str, dict[str, Any]]


def _open_session(
    path: Path, providers: Sequence[ProviderEntry], options: ort.SessionOptions
) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc


def select_providers(
    available: Sequence[str], precision: str = "auto", engine_cache: Path | None = None
) -> tuple[list[ProviderEntry], str]:
    """ONNX Runtime providers in priority order, and the precision they compute in.

    With a GPU build: TensorRT in FP16 (engines cached under ``engine_cache``) when
    ``precision`` is ``"auto"`` or ``"fp16"`` and the build has it, then CUDA, then the
    CPU. ``"fp32"`` leaves TensorRT out (CUDA → CPU). A CPU-only build gives the CPU.

    Args:
        available: ``onnxruntime.get_available_providers()`` (a parameter, so tests can
            fake a GPU build).
        precision: ``"auto"``, ``"fp32"`` or ``"fp16"``.
        engine_cache: TensorRT engine and timing cache folder (``None``: no cache).

    Raises:
        ConfigError: ``"bf16"`` (an OpenVINO precision), ``"fp16"`` without TensorRT,
            or an unknown precision.
    """
    if precision not in ("auto", "fp32", "fp16"):
        hint = (
            " (bf16 runs on the OpenVINO runtime: POLYPINDEX_RUNTIME=openvino)"
            if precision == "bf16"
            else ""
        )
        raise ConfigError(
            f"ONNX Runtime precision must be auto, fp32 or fp16, got {precision!r}{hint}"
        )
    providers: list[ProviderEntry] = []
    chosen = "fp32"
    if TENSORRT in available and precision in ("auto", "fp16"):
        options: dict[str, Any] = {"trt_fp16_enable": True}
        if engine_cache is not None:
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(engine_cache),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(engine_cache),
            )
        providers.append((TENSORRT, options))
        chosen = "fp16"
    elif precision == "fp16":
        raise ConfigError(
            f"fp16 needs ONNX Runtime's TensorRT provider; this build has {list(available)}"
        )
    if CUDA in available:
        providers.append(CUDA)
    providers.append(CPU)
    return providers, chosen


def _preload_gpu_libraries() -> None:
    """Let onnxruntime-gpu find the pip-installed CUDA/cuDNN libraries (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if callable(preload):
        try:
            preload()
        except Exception as exc:  # a missing library shows up again when the session opens
            logger.warning("onnxruntime.preload_dlls() failed: %s", exc)


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU (no TensorRT: FP32)."""
    providers, _ = select_providers(ort.get_available_providers(), "fp32")
    return [p if isinstance(p, str) else p[0] for p in providers]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The model's custom metadata (``metadata_props``) as a ``{key: value}`` string map.

    Raises:
        ModelLoadError: the file is missing or not a loadable ONNX model.
    """
    opts = _session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _open_session(Path(path), [CPU], opts)
    return dict(session.get_modelmeta().custom_metadata_map)


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
        reference: the model's reference embeddings (:mod:`model.parity`), or ``None``
            for a model exported before they existed.
        parity: the load-time parity check (:func:`model.backends.check_parity`), set by
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
                    f"export it with model.export.export_onnx"
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
                the output of :func:`model.preprocess.normalize` (do not normalise again).

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
                f"frames must be float32 {self.expected_shape} (normalised crops from model.preprocess), "
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
        :func:`model.embedding.tracklet_fragments`)."""
        return tracklet_fragments(n_frames, self.fragment)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Embed one tracklet from raw frames, exactly as the indexer does.

        Frames are chosen with this model's fragment rule (:meth:`tracklet_frames`),
        cropped by :class:`model.embedding.CropStream` with this model's preprocessing
        and normalised with :func:`model.preprocess.normalize`. If the rule yields
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


class OnnxEncoder(EncoderBase):
    """The exported HMVE, run with ONNX Runtime.

    Args:
        path: an ``.onnx`` file written by :func:`model.export.export_onnx`.
        providers: execution providers in priority order; default
            :func:`select_providers` on this build (TensorRT FP16 → CUDA → CPU with
            ``precision="auto"``, CUDA → CPU with ``"fp32"``).
        intra_op_threads: threads per operator; ``None`` = onnxruntime's default.
        precision: ``"auto"``, ``"fp32"`` or ``"fp16"`` (TensorRT); ignored when
            ``providers`` is given (then FP16 only if TensorRT is among them).
        engine_cache: TensorRT engine cache folder (the layout's ``engine_cache``).

    Attributes:
        providers: the providers the session actually uses.
        (and those of :class:`EncoderBase`)

    Raises:
        ModelLoadError: missing or unloadable file, or missing/invalid metadata.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[ProviderEntry] | None = None,
        intra_op_threads: int | None = None,
        precision: str = "fp32",
        engine_cache: Path | None = None,
    ) -> None:
        if providers:
            chosen = list(providers)
        else:
            chosen, _ = select_providers(ort.get_available_providers(), precision, engine_cache)
        if engine_cache is not None and any(
            not isinstance(p, str) and p[0] == TENSORRT for p in chosen
        ):
            Path(engine_cache).mkdir(parents=True, exist_ok=True)
        options = _session_options(intra_op_threads)
        names = [p if isinstance(p, str) else p[0] for p in chosen]
        self.fallback_reason: str | None = None
        if CUDA in names or TENSORRT in names:
            try:
                _preload_gpu_libraries()
                self._session = _open_session(Path(path), chosen, options)
            except ModelLoadError as exc:
                if not Path(path).is_file():
                    raise
                self.fallback_reason = f"GPU providers {names} failed ({exc}); running on the CPU"
                logger.warning("%s", self.fallback_reason)
                self._session = _open_session(Path(path), [CPU], options)
        else:
            self._session = _open_session(Path(path), chosen, options)
        self.providers: list[str] = list(self._session.get_providers())
        trt_fp16 = any(
            not isinstance(p, str) and p[0] == TENSORRT and p[1].get("trt_fp16_enable")
            for p in chosen
        )
        runtime_precision = "fp16" if TENSORRT in self.providers and trt_fp16 else "fp32"
        super().__init__(
            Path(path),
            dict(self._session.get_modelmeta().custom_metadata_map),
            [i.name for i in self._session.get_inputs()],
            runtime_precision,
        )

    def _run(self, x: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return np.asarray(out)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": self.providers[0], "providers": self.providers}
