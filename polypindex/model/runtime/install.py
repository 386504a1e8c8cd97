"""Which ONNX Runtime and FAISS distributions this install has, and whether they clash.

ONNX Runtime ships as several distributions (``onnxruntime``, ``onnxruntime-gpu``, ...)
that all install the same ``onnxruntime`` module, and FAISS likewise (``faiss-cpu``,
``faiss-gpu-cu12``, ...). Two of a family in one environment overwrite each other's
files and the one that wins is whichever was installed last, so an install must hold
exactly one of each: the ``cpu`` extra brings ``onnxruntime`` + ``faiss-cpu``, the
``gpu`` extra ``onnxruntime-gpu`` + ``faiss-gpu-cu12`` (docs/gpu.md).
:func:`install_problems` says what is wrong, in words an operator can act on; the
service reports it in ``/healthz``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

ONNX_RUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
)
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")
FAMILIES = {"ONNX Runtime": ONNX_RUNTIME_DISTRIBUTIONS, "FAISS": FAISS_DISTRIBUTIONS}


def _installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def installed(
    names: tuple[str, ...], lookup: Callable[[str], str | None] = _installed_version
) -> dict[str, str]:
    """The distributions of ``names`` that are installed, with their versions."""
    found = {name: lookup(name) for name in names}
    return {name: v for name, v in found.items() if v is not None}


def install_problems(lookup: Callable[[str], str | None] = _installed_version) -> list[str]:
    """One sentence per family that is missing or installed twice; empty when all is well."""
    problems = []
    for family, names in FAMILIES.items():
        present = installed(names, lookup)
        if not present:
            problems.append(
                f"no {family} is installed: install polypindex with the 'cpu' or the 'gpu' extra"
            )
        elif len(present) > 1:
            listed = ", ".join(f"{name} {v}" for name, v in sorted(present.items()))
            problems.append(
                f"{len(present)} {family} distributions are installed ({listed}); they "
                f"overwrite each other's files: keep exactly one (pip uninstall the others, "
                f"then reinstall the one you keep)"
            )
    return problems
