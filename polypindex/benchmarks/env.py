"""The one environment record of the benchmarks, and how they write their results.

Every benchmark stores :func:`environment` under ``"environment"`` in its JSON result:
the hardware (CPU model, cores, the SIMD/AMX flags that decide FAISS and ONNX Runtime
speed, the GPU when torch already sees one) and the versions of Python and of the
libraries that matter (``None`` when one is not installed). Versions are read from the
installed distributions, so recording them imports neither torch nor FAISS.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# module name -> distributions that provide it (the first installed one is reported)
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "torch": ("torch",),
    "lightning": ("lightning",),
    "sqlalchemy": ("sqlalchemy",),
    "polypindex": ("polypindex",),
}
# CPU flags worth recording (vector widths and matrix units used by BLAS/FAISS/ORT)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of Linux ``/proc/cpuinfo`` (``None`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str] | None:
    """Which of :data:`CPU_FLAGS` the CPU has (``None`` where ``/proc/cpuinfo`` is absent)."""
    flags = _cpuinfo_field("flags")
    if flags is None:
        return None
    present = set(flags.split())
    return [f for f in CPU_FLAGS if f in present]


def library_version(module: str) -> str | None:
    """The installed version of ``module`` (an imported module's ``__version__``, else
    its distribution's metadata), ``None`` when it is not installed."""
    loaded = sys.modules.get(module)
    version = getattr(loaded, "__version__", None)
    if version:
        return str(version)
    for dist in LIBRARIES.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _accelerators() -> dict[str, Any]:
    """FAISS threads/GPUs and the torch GPU, for the libraries the benchmark imported."""
    out: dict[str, Any] = {}
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        out["faiss_threads"] = faiss.omp_get_max_threads()
        out["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return out


def environment(**extra: Any) -> dict[str, Any]:
    """Hardware and library versions, recorded with every benchmark result.

    Args:
        extra: benchmark-specific entries added last (e.g. ``device="cuda"``).

    Returns:
        A JSON-ready dict: ``cpu``, ``cpu_count``, ``cpu_affinity``, ``cpu_flags``,
        ``machine``, ``platform``, ``python``, ``python_implementation``, one version per
        :data:`LIBRARIES` entry, ``faiss_threads``/``faiss_gpus`` when FAISS is loaded,
        ``gpu``/``cuda`` when torch is loaded and sees a GPU, then ``extra``.
    """
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }
    env.update({name: library_version(name) for name in LIBRARIES})
    env.update(_accelerators())
    env.update(extra)
    return env


def write_result(path: Path, result: Any, echo: bool = True) -> Path:
    """Write a benchmark's result as indented JSON to ``path`` (folders created) and,
    when ``echo``, print it."""
    text = json.dumps(result, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if echo:
        print(text)
    return path
