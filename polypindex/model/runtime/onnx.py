"""The ONNX Runtime encoder (:class:`OnnxEncoder`, the default runtime) and the choice
of its execution providers (TensorRT, CUDA, CPU); the shared metadata, checks and
batching are :class:`model.runtime.base.EncoderBase`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.runtime.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    EncoderBase,
    check_threads,
)

logger = logging.getLogger(__name__)
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if intra_op_threads is not None:
        check_threads(intra_op_threads)
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


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


class OnnxEncoder(EncoderBase):
    """The exported HMVE, run with ONNX Runtime.

    Args:
        path: an ``.onnx`` file written by :func:`model.nets.export.export_onnx`.
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
