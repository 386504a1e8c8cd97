"""Choosing the encoder runtime: :func:`load_encoder` and the :class:`EncoderRuntime` protocol.

Two runtimes read the same exported ONNX file: ONNX Runtime
(:class:`model.runtime.OnnxEncoder`, the default, and the one used with a GPU) and
OpenVINO (:class:`model.openvino_runtime.OpenVinoEncoder`, an install extra). With
``runtime="auto"`` OpenVINO is chosen when it is installed, ONNX Runtime has no GPU
provider, and the CPU has BF16 matrix units (``amx_bf16`` or ``avx512_bf16`` in
``/proc/cpuinfo``); then ``precision="auto"`` means BF16. Everywhere else ONNX Runtime
runs, in FP32 on the CPU and CUDA, FP16 with TensorRT (see
:func:`model.runtime.select_providers`). The settings are ``POLYPINDEX_RUNTIME`` and
``POLYPINDEX_PRECISION`` (:class:`model.layout.Layout`); ``encoder.describe()`` says
what was chosen. See docs/runtimes.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from polypindex.model.embedding import SequenceEncoder
from polypindex.model.errors import ConfigError
from polypindex.model.openvino_runtime import OpenVinoEncoder, openvino_available
from polypindex.model.runtime import CUDA, TENSORRT, EncoderBase, OnnxEncoder

RUNTIMES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class EncoderRuntime(SequenceEncoder, Protocol):
    """What the indexer, the service and the probes use of an encoder (both runtimes)."""

    def embed(self, frames: np.ndarray) -> np.ndarray: ...

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``; empty if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU has BF16 matrix or vector units (AMX-BF16 or AVX512-BF16)."""
    present = cpu_flags() if flags is None else flags
    return any(flag in present for flag in BF16_FLAGS)


def resolve_runtime(
    runtime: str = "auto",
    precision: str = "auto",
    *,
    flags: set[str] | None = None,
    ort_providers: Sequence[str] | None = None,
    have_openvino: bool | None = None,
) -> tuple[str, str]:
    """``(runtime, precision)`` to use, ``"auto"`` resolved (module docstring).

    The keyword arguments stand in for the machine (tests fake a CPU or a GPU build):
    ``flags`` the CPU flags, ``ort_providers`` ONNX Runtime's available providers,
    ``have_openvino`` whether OpenVINO is installed.

    Raises:
        ConfigError: an unknown runtime or precision, or a combination that cannot run
            (``bf16`` on ONNX Runtime, ``fp16`` on OpenVINO).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    providers = list(ort.get_available_providers() if ort_providers is None else ort_providers)
    has_gpu = CUDA in providers or TENSORRT in providers
    bf16 = cpu_has_bf16(flags)
    if runtime == "auto":
        ov = openvino_available() if have_openvino is None else have_openvino
        if precision == "bf16":
            runtime = "openvino"
        elif precision == "fp16":
            runtime = "onnxruntime"
        else:
            runtime = "openvino" if ov and bf16 and not has_gpu else "onnxruntime"
    if runtime == "openvino":
        if precision == "fp16":
            raise ConfigError("fp16 runs on ONNX Runtime with TensorRT, not on OpenVINO")
        if precision == "auto":
            precision = "bf16" if bf16 else "fp32"
    elif precision == "bf16":
        raise ConfigError("bf16 runs on the OpenVINO runtime (POLYPINDEX_RUNTIME=openvino)")
    return runtime, precision


def load_encoder(
    path: str | Path,
    runtime: str = "auto",
    precision: str = "auto",
    *,
    threads: int | None = None,
    engine_cache: Path | None = None,
) -> EncoderBase:
    """The exported encoder at ``path`` on the runtime and precision asked for.

    Args:
        path: the ``.onnx`` file.
        runtime: ``"auto"``, ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` (OpenVINO) or ``"fp16"``
            (ONNX Runtime + TensorRT). An INT8 model stays INT8 whatever is chosen.
        threads: intra-op threads (``None``: the runtime's default).
        engine_cache: TensorRT engine cache folder.

    Raises:
        ModelLoadError: the file cannot be loaded (or OpenVINO is not installed).
        ConfigError: see :func:`resolve_runtime`.
    """
    runtime, precision = resolve_runtime(runtime, precision)
    if runtime == "openvino":
        return OpenVinoEncoder(path, precision=precision, threads=threads)
    return OnnxEncoder(
        path, intra_op_threads=threads, precision=precision, engine_cache=engine_cache
    )


def layout_encoder(layout: Any, path: str | Path | None = None) -> EncoderBase:
    """The encoder a :class:`model.layout.Layout` names: ``path`` (default its
    ``model_path``) on its ``runtime`` and ``precision``, TensorRT engines cached in
    its ``engine_cache``."""
    return load_encoder(
        layout.model_path if path is None else path,
        layout.runtime,
        layout.precision,
        engine_cache=layout.engine_cache,
    )
