"""Choosing the encoder runtime: :func:`load_encoder` and the :class:`EncoderRuntime` protocol.

Two runtimes read the same exported ONNX file: ONNX Runtime
(:class:`model.runtime.onnx.OnnxEncoder`, the default, and the one used with a GPU) and
OpenVINO (:class:`model.runtime.openvino.OpenVinoEncoder`, an install extra). With
``runtime="auto"`` OpenVINO is chosen when it is installed, ONNX Runtime has no GPU
provider, and the CPU has BF16 matrix units (``amx_bf16`` or ``avx512_bf16`` in
``/proc/cpuinfo``); then ``precision="auto"`` means BF16. Everywhere else ONNX Runtime
runs, in FP32 on the CPU and CUDA, FP16 with TensorRT (see
:func:`model.runtime.onnx.select_providers`). The settings are ``POLYPINDEX_RUNTIME`` and
``POLYPINDEX_PRECISION`` (:class:`model.core.layout.Layout`); ``encoder.describe()`` says
what was chosen. See docs/runtimes.md.

Every runtime serves the model's one encoder version. :func:`load_encoder` (the one way
every path gets an encoder: indexing, probes, grouping, benchmarks, the service, the
CLI) checks at load that the chosen runtime reproduces the model's reference embeddings
(:mod:`model.runtime.parity`, min cosine ``min_cosine``); a reduced precision that does not is
replaced by FP32 on the same runtime, and anything that still does not by ONNX Runtime
FP32 on the CPU (the reference runtime), with the reason in ``describe()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.data.embedding import SequenceEncoder
from polypindex.model.runtime.base import EncoderBase
from polypindex.model.runtime.onnx import CPU, CUDA, TENSORRT, OnnxEncoder
from polypindex.model.runtime.openvino import OpenVinoEncoder, openvino_available
from polypindex.model.runtime.parity import DEFAULT_MIN_COSINE, parity_cosines, reference_inputs

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class EncoderRuntime(SequenceEncoder, Protocol):
    """What the indexer, the service and the probes use of an encoder (both runtimes)."""

    def embed(self, frames: np.ndarray) -> np.ndarray: ...

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


CPUINFO = "/proc/cpuinfo"
# Stands in for this CPU's flags (space-separated) where set: the test matrix runs the
# suite as an AVX2-only, an AVX-512-BF16 and an AMX machine on any CI CPU (Makefile).
FAKE_FLAGS_ENV = "POLYPINDEX_CPU_FLAGS"


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of ``cpuinfo``; empty if
    unreadable). For this machine's own ``/proc/cpuinfo``, ``POLYPINDEX_CPU_FLAGS``
    (space-separated flags) replaces them when set: how tests fake another CPU."""
    fake = os.environ.get(FAKE_FLAGS_ENV)
    if fake is not None and str(cpuinfo) == CPUINFO:
        return set(fake.split())
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


def _build(
    path: str | Path,
    runtime: str,
    precision: str,
    threads: int | None,
    engine_cache: Path | None,
    providers: Sequence[str] | None = None,
) -> EncoderBase:
    if runtime == "openvino":
        return OpenVinoEncoder(path, precision=precision, threads=threads)
    return OnnxEncoder(
        path,
        providers=providers,
        intra_op_threads=threads,
        precision=precision,
        engine_cache=engine_cache,
    )


def _is_reference_runtime(encoder: EncoderBase) -> bool:
    """ONNX Runtime, FP32, on the CPU provider alone: what computed the reference."""
    return (
        isinstance(encoder, OnnxEncoder)
        and encoder.runtime_precision == "fp32"
        and encoder.providers == [CPU]
    )


def reference_embeddings(encoder: EncoderBase) -> tuple[np.ndarray, np.ndarray, str]:
    """``(inputs, reference embeddings, where they come from)`` for ``encoder``'s model.

    The stored reference (``"metadata"``) when the model has one and the fixed inputs
    are still the same bytes; else the reference runtime's embeddings of the inputs,
    computed now (``"computed"``: a model exported before references existed).
    """
    stored = encoder.reference
    if stored is not None:
        inputs = stored.inputs()
        if stored.inputs_match(inputs) and stored.embeddings.shape[1] == encoder.dim:
            return inputs, stored.embeddings, "metadata"
        logger.warning(
            "%s: the stored reference inputs cannot be reproduced here; computing the "
            "reference on ONNX Runtime FP32 (CPU)",
            encoder.path,
        )
    inputs = reference_inputs(encoder.preprocess.im_size)
    reference = OnnxEncoder(encoder.path, providers=[CPU])
    return inputs, reference.run_raw(inputs), "computed"


def check_parity(encoder: EncoderBase, min_cosine: float = DEFAULT_MIN_COSINE) -> dict[str, Any]:
    """Embed the fixed reference inputs with ``encoder`` and compare with the model's
    reference embeddings; the result is also stored as ``encoder.parity``.

    Returns:
        ``{"min_cosine", "threshold", "passed", "reference", "inputs"}``.
    """
    inputs, expected, source = reference_embeddings(encoder)
    cosines = parity_cosines(encoder.run_raw(inputs), expected)
    worst = float(cosines.min())
    encoder.parity = {
        "min_cosine": round(worst, 6),
        "threshold": float(min_cosine),
        "passed": bool(worst >= min_cosine),
        "reference": source,
        "inputs": len(inputs),
    }
    return encoder.parity


def load_encoder(
    path: str | Path,
    runtime: str = "auto",
    precision: str = "auto",
    *,
    threads: int | None = None,
    engine_cache: Path | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    providers: Sequence[str] | None = None,
    flags: set[str] | None = None,
) -> EncoderBase:
    """The exported encoder at ``path`` on the runtime and precision asked for, checked
    against the model's reference embeddings (module docstring).

    Args:
        path: the ``.onnx`` file.
        runtime: ``"auto"``, ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` (OpenVINO) or ``"fp16"``
            (ONNX Runtime + TensorRT). An INT8 model stays INT8 whatever is chosen.
        threads: intra-op threads (``None``: the runtime's default).
        engine_cache: TensorRT engine cache folder.
        min_cosine: the parity check's minimum cosine (the layout's ``parity_min_cosine``).
        providers: ONNX Runtime providers to use instead of the automatic choice (the
            GPU benchmark compares them); implies ``runtime="onnxruntime"``.
        flags: the CPU flags to decide ``auto`` with (tests fake a CPU); default
            ``/proc/cpuinfo``.

    Raises:
        ModelLoadError: the file cannot be loaded (or OpenVINO is not installed), or
            not even the reference runtime reproduces the model's reference embeddings
            (the file was changed after export).
        ConfigError: see :func:`resolve_runtime`.
    """
    if providers is not None:
        runtime = "onnxruntime"
    runtime, precision = resolve_runtime(runtime, precision, flags=flags)
    encoder = _build(path, runtime, precision, threads, engine_cache, providers)
    parity = check_parity(encoder, min_cosine)
    reasons: list[str] = [encoder.fallback_reason] if encoder.fallback_reason else []
    if not parity["passed"] and encoder.runtime_precision != "fp32":
        reasons.append(
            f"{encoder.runtime} {encoder.runtime_precision} failed the parity check "
            f"(min cosine {parity['min_cosine']:.6f} < {min_cosine}); running FP32"
        )
        encoder = _build(path, runtime, "fp32", threads, engine_cache, None)
        parity = check_parity(encoder, min_cosine)
    if not parity["passed"] and not _is_reference_runtime(encoder):
        reasons.append(
            f"{encoder.runtime} ({encoder.describe()['provider']}) FP32 failed the parity check "
            f"(min cosine {parity['min_cosine']:.6f} < {min_cosine}); running ONNX Runtime "
            f"FP32 on the CPU"
        )
        encoder = OnnxEncoder(path, providers=[CPU], intra_op_threads=threads)
        parity = check_parity(encoder, min_cosine)
    if not parity["passed"]:
        raise ModelLoadError(
            f"{path} does not reproduce its own reference embeddings on ONNX Runtime FP32 "
            f"(min cosine {parity['min_cosine']:.6f} < {min_cosine}): the file was changed "
            f"after export; export it again"
        )
    if reasons:
        encoder.fallback_reason = "; ".join(reasons)
        logger.warning("encoder %s: %s", encoder.version, encoder.fallback_reason)
    return encoder


def layout_encoder(layout: Any, path: str | Path | None = None) -> EncoderBase:
    """The encoder a :class:`model.core.layout.Layout` names: ``path`` (default its
    ``model_path``) on its ``runtime`` and ``precision``, TensorRT engines cached in
    its ``engine_cache``."""
    return load_encoder(
        layout.model_path if path is None else path,
        layout.runtime,
        layout.precision,
        engine_cache=layout.engine_cache,
        min_cosine=layout.parity_min_cosine,
    )
