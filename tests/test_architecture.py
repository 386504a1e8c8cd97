"""Import directions (STYLE.md) and the torch-free serving path, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "indexer", "service", "benchmarks", "polypindex")

# package -> top-level names it must never import
FORBIDDEN = {
    "model": {"training", "indexer", "service", "benchmarks", "polypindex"},
    "training": {"indexer", "service", "polypindex"},
    "indexer": {
        "training",
        "service",
        "benchmarks",
        "polypindex",
        "torch",
        "torchvision",
        "lightning",
    },
    "service": {"training", "benchmarks", "polypindex", "torch", "torchvision", "lightning"},
}
# serving-path modules of model/ that must stay torch-free
TORCH_FREE_MODEL_MODULES = (
    "config",
    "errors",
    "tracklets",
    "preprocess",
    "coco",
    "runtime",
    "evaluation",
    "probe",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_directions(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package}/ imports what it must not: {offenders}"


@pytest.mark.parametrize("module", TORCH_FREE_MODEL_MODULES)
def test_serving_modules_of_model_are_torch_free(module: str) -> None:
    path = ROOT / "model" / f"{module}.py"
    if not path.exists():
        pytest.skip(f"model/{module}.py not present")
    assert not _imports(path) & {"torch", "torchvision", "lightning", "sklearn"}


def test_service_app_imports_without_torch() -> None:
    code = "import sys, service.app, indexer.pipeline, model.runtime; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", "the serving path imported torch"
