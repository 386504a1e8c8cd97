"""The OpenVINO runtime for the exported ONNX encoder (the same file ONNX Runtime reads).

On CPUs with BF16 matrix units (AMX, AVX512-BF16) OpenVINO can run the FP32 graph with
BF16 inference precision; elsewhere it runs FP32. The precision asked for is set
explicitly (OpenVINO would otherwise pick BF16 by itself on AMX CPUs) and the precision
the compiled model reports is the one ``describe()`` shows: a BF16 request on a CPU
without BF16 units runs FP32. Either way the encoder version is the model's own; a BF16
runtime serves it after the load-time parity check of :func:`model.runtime.loader.load_encoder`.

OpenVINO is an install extra (``pip install 'polypindex[openvino]'``); this module
imports it when an encoder is built, so importing the module never needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.runtime.base import INPUT_NAME, EncoderBase, check_threads
from polypindex.model.runtime.onnx import read_onnx_metadata

# our precision name -> OpenVINO's INFERENCE_PRECISION_HINT
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_available() -> bool:
    """Whether the ``openvino`` package is importable."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _precision_name(hint: Any) -> str:
    """Our name for an OpenVINO element type / hint (``f32`` → ``fp32``)."""
    text = str(getattr(hint, "to_string", lambda: hint)()).lower()
    text = text.replace("<type: '", "").replace("'>", "")
    return {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(text, text)


class OpenVinoEncoder(EncoderBase):
    """The exported HMVE, run with OpenVINO on the CPU.

    Args:
        path: an ``.onnx`` file written by :func:`model.nets.export.export_onnx` (or an INT8
            model from :func:`model.nets.quantize.quantize_onnx`).
        precision: ``"fp32"`` or ``"bf16"`` (the inference precision hint).
        threads: inference threads; ``None`` = OpenVINO's default (all cores).
        device: the OpenVINO device (``"CPU"``).

    Attributes:
        requested_precision: what was asked for; :attr:`runtime_precision` is what the
            compiled model reports (FP32 when the CPU has no BF16).

    Raises:
        ModelLoadError: OpenVINO not installed, a missing or unloadable file, or
            missing/invalid metadata.
        ConfigError: an unknown precision.
    """

    runtime = "openvino"

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        threads: int | None = None,
        device: str = "CPU",
    ) -> None:
        if precision not in OV_PRECISION:
            raise ConfigError(
                f"OpenVINO precision must be one of {sorted(OV_PRECISION)}, got {precision!r}"
            )
        check_threads(threads)
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelLoadError(
                "the OpenVINO runtime is not installed: pip install 'polypindex[openvino]' "
                "(or set POLYPINDEX_RUNTIME=onnxruntime)"
            ) from exc
        path = Path(path)
        meta = read_onnx_metadata(path)  # raises ModelLoadError for a missing/bad file
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            inputs = [i.get_any_name() for i in model.inputs]
            self._compiled = core.compile_model(model, device, config)
            actual = _precision_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"OpenVINO cannot load ONNX model {path}: {exc}") from exc
        self.requested_precision = precision
        self.device = device
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time
        super().__init__(path, meta, inputs, actual if actual in ("fp32", "bf16") else "fp32")

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self._request.infer({INPUT_NAME: x})
            return np.array(result[self._compiled.output(0)], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "provider": self.device,
            "requested_precision": self.requested_precision,
        }
