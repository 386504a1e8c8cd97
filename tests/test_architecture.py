"""Import directions per layer, no import circles, and the torch-free serving path,
checked on the source (see docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers, each a top-level folder installed as ``polypindex.<layer>``; the CLI is
# everything else under polypindex/ (its own modules, not the linked folders).
LAYERS = ("model", "training", "indexer", "service", "benchmarks")
CLI = "cli"
TORCH = {"torch", "torchvision", "lightning"}

# layer -> the polypindex layers it may import (itself always allowed)
ALLOWED = {
    "model": set(),
    "training": {"model"},
    "indexer": {"model"},
    "service": {"model", "indexer"},
    "benchmarks": {"model", "training", "indexer", "service"},
}
# layer -> third-party top-level names it must never import (plots are an extra that
# the serving install does not have)
PLOTS = {"matplotlib"}
FORBIDDEN_THIRD_PARTY = {
    "model": PLOTS,
    "indexer": TORCH | PLOTS,
    "service": TORCH | PLOTS,
}
# serving-path modules of model/ that must stay torch-free
TORCH_FREE_MODEL_MODULES = (
    "config",
    "embedding",
    "errors",
    "files",
    "layout",
    "metrics",
    "reid",
    "tracklets",
    "preprocess",
    "coco",
    "runtime",
    "backends",
    "openvino_runtime",
    "quantize",
    "evaluation",
    "probe",
)


def _layer_files(layer: str) -> Iterator[Path]:
    if layer == CLI:
        for path in (ROOT / "polypindex").rglob("*.py"):
            rel = path.relative_to(ROOT / "polypindex").parts
            if rel[0] not in LAYERS:
                yield path
    else:
        yield from (ROOT / layer).rglob("*.py")


def _module_name(path: Path) -> str:
    """The dotted name a file is imported as (``polypindex.model.encoder``)."""
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[0] != "polypindex":
        parts.insert(0, "polypindex")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(path: Path) -> set[str]:
    """Absolute dotted names imported anywhere in the file (lazy imports included,
    ``if TYPE_CHECKING:`` blocks left out); relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            # ``from polypindex.model import config`` imports a module too
            names.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _polypindex_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "polypindex":
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return CLI


@pytest.mark.parametrize("layer", LAYERS)
def test_import_directions(layer: str) -> None:
    offenders: dict[str, list[str]] = {}
    for path in _layer_files(layer):
        bad = set()
        for module in _imported_modules(path):
            top = module.split(".")[0]
            target = _polypindex_layer(module)
            if target is not None and target != layer and target not in ALLOWED[layer]:
                bad.add(module)
            if top in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                bad.add(module)
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{layer}/ imports what it must not: {offenders}"


@pytest.mark.parametrize("layer", [*LAYERS, CLI])
def test_no_bare_top_level_imports(layer: str) -> None:
    """Everything is imported through the one namespace: ``polypindex.model``, never
    ``model`` (which would load a second copy, or another project's package)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] in LAYERS
        )
        for path in _layer_files(layer)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"bare top-level imports: {offenders}"


def test_tests_import_through_the_namespace() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] in LAYERS
        )
        for path in (ROOT / "tests").rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"tests import bare top-level names: {offenders}"


def _module_graph() -> dict[str, set[str]]:
    files = [p for layer in (*LAYERS, CLI) for p in _layer_files(layer)]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imported_modules(path):
            # the longest known module the import names (a name imported from a
            # module is not a module of its own)
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            target = ".".join(parts)
            # a package's __init__ is not a dependency edge of its own submodules
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_circles() -> None:
    graph = _module_graph()
    assert "polypindex.model.encoder" in graph  # the graph covers the linked layers
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", TORCH_FREE_MODEL_MODULES)
def test_serving_modules_of_model_are_torch_free(module: str) -> None:
    path = ROOT / "model" / f"{module}.py"
    if not path.exists():
        pytest.skip(f"model/{module}.py not present")
    tops = {m.split(".")[0] for m in _imported_modules(path)}
    assert not tops & (TORCH | {"sklearn"})


def test_service_app_imports_without_torch() -> None:
    code = (
        "import sys, polypindex.service.app, polypindex.indexer.pipeline, "
        "polypindex.model.runtime; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", "the serving path imported torch"


def test_layers_are_linked_into_the_namespace() -> None:
    for layer in LAYERS:
        link = ROOT / "polypindex" / layer
        assert link.is_symlink() and link.resolve() == (ROOT / layer).resolve(), link


def test_one_atomic_write() -> None:
    """Temp file + rename is written once (``model/files.py``); everything else calls it."""
    banned = {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp"), ("shutil", "move")}
    offenders = []
    for path in (p for layer in (*LAYERS, CLI) for p in _layer_files(layer)):
        if path == ROOT / "model" / "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in banned
            ):
                offenders.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}"
                )
    assert not offenders, f"write through polypindex.model.files instead: {offenders}"


def test_one_way_to_get_an_encoder() -> None:
    """Every product path loads the encoder through ``model.backends.load_encoder`` (the
    runtime choice and the parity check); only the loader builds a runtime class."""
    runtimes = {"OnnxEncoder", "OpenVinoEncoder"}
    allowed = {ROOT / "model" / "backends.py"}
    offenders = []
    for path in (p for layer in (*LAYERS, CLI) for p in _layer_files(layer)):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in runtimes:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not offenders, f"load through polypindex.model.backends.load_encoder: {offenders}"
