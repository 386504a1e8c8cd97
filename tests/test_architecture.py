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
PACKAGE = ROOT / "polypindex"
# The layers, each a folder of the package (``polypindex/<layer>``, with a link of the same
# name at the top level); the CLI is everything else under polypindex/.
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
# model/'s subpackages, lowest first: each may import only those before it (docs/architecture.md)
MODEL_SUBPACKAGES = ("core", "data", "scoring", "runtime", "nets")
# the serving path's part of model/: torch-free (nets/ holds the torch models and export)
TORCH_FREE_MODEL_SUBPACKAGES = ("core", "data", "scoring", "runtime")
TORCH_FREE_MODEL_MODULES = ("nets/quantize",)
MAX_LINES = 500


def _layer_files(layer: str) -> Iterator[Path]:
    if layer == CLI:
        for path in PACKAGE.rglob("*.py"):
            if path.relative_to(PACKAGE).parts[0] not in LAYERS:
                yield path
    else:
        yield from (PACKAGE / layer).rglob("*.py")


def _all_files() -> list[Path]:
    return [p for layer in (*LAYERS, CLI) for p in _layer_files(layer)]


def _module_name(path: Path) -> str:
    """The dotted name a file is imported as (``polypindex.model.nets.encoder``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
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
    files = _all_files()
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
    assert "polypindex.model.nets.encoder" in graph  # the graph covers the linked layers
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


@pytest.mark.parametrize("sub", MODEL_SUBPACKAGES)
def test_model_subpackage_directions(sub: str) -> None:
    """model/'s subpackages import only the ones below them (core < data < scoring <
    runtime < nets) and never the package's other layers."""
    allowed = set(MODEL_SUBPACKAGES[: MODEL_SUBPACKAGES.index(sub) + 1])
    offenders = {}
    for path in (PACKAGE / "model" / sub).rglob("*.py"):
        bad = sorted(
            m
            for m in _imported_modules(path)
            if m.startswith("polypindex.model.")
            and m.split(".")[2] in MODEL_SUBPACKAGES
            and m.split(".")[2] not in allowed
        )
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"model/{sub}/ imports a higher subpackage: {offenders}"


def test_model_has_only_its_subpackages() -> None:
    modules = {p.name for p in (PACKAGE / "model").glob("*.py")}
    assert modules == {"__init__.py"}, f"model/ modules outside a subpackage: {modules}"
    subs = {p.name for p in (PACKAGE / "model").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert subs == set(MODEL_SUBPACKAGES)


def _torch_free_model_files() -> list[Path]:
    files = [
        p for sub in TORCH_FREE_MODEL_SUBPACKAGES for p in (PACKAGE / "model" / sub).rglob("*.py")
    ]
    return files + [PACKAGE / "model" / f"{m}.py" for m in TORCH_FREE_MODEL_MODULES]


@pytest.mark.parametrize(
    "path", _torch_free_model_files(), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_serving_modules_of_model_are_torch_free(path: Path) -> None:
    tops = {m.split(".")[0] for m in _imported_modules(path)}
    assert not tops & (TORCH | {"sklearn"})


def test_service_app_imports_without_torch() -> None:
    code = (
        "import sys, polypindex.service.app, polypindex.indexer.pipeline, "
        "polypindex.model.runtime.onnx; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", "the serving path imported torch"


def test_one_real_path_per_file() -> None:
    """The package holds every file (no link inside it); each top-level layer folder is a
    link to its package folder, for browsing only (docs/architecture.md#layout)."""
    links = [p for p in PACKAGE.rglob("*") if p.is_symlink()]
    assert not links, f"links inside the package: {links}"
    for layer in LAYERS:
        real, link = PACKAGE / layer, ROOT / layer
        assert real.is_dir() and not real.is_symlink(), real
        assert link.is_symlink() and link.resolve() == real.resolve(), link
        assert Path(link.readlink()) == Path("polypindex") / layer  # relative: a clone moves


def _defined_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (definitions and assignments, in ``if`` and
    ``try`` blocks too), not the names it imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _public_list(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def test_every_name_has_one_import_path() -> None:
    """``from polypindex.X import name`` names the module that defines ``name`` (or a
    package whose ``__init__`` lists it in ``__all__``): nothing is re-exported."""
    modules = {_module_name(p): p for p in _all_files()}
    trees = {name: ast.parse(p.read_text(), filename=str(p)) for name, p in modules.items()}
    defined = {name: _defined_names(t) for name, t in trees.items()}
    offenders = []
    sources = [*modules.values(), *(ROOT / "tests").rglob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module not in modules:
                continue
            public = (
                _public_list(trees[node.module])
                if modules[node.module].name == "__init__.py"
                else []
            )
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules or alias.name in public:
                    continue
                if alias.name not in defined[node.module]:
                    offenders.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {alias.name} from {node.module}"
                    )
    assert not offenders, f"imported from a module that does not define it: {offenders}"


def test_public_lists_outside_packages_hold_own_names() -> None:
    """A module's ``__all__`` (outside ``__init__.py``) lists only what it defines."""
    offenders = {}
    for path in _all_files():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        foreign = sorted(set(_public_list(tree)) - _defined_names(tree))
        if foreign:
            offenders[str(path.relative_to(ROOT))] = foreign
    assert not offenders, f"re-exported in __all__: {offenders}"


def test_no_file_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*_all_files(), *(ROOT / "tests").rglob("*.py")]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_one_atomic_write() -> None:
    """Temp file + rename is written once (``model/core/files.py``); everything else calls it."""
    banned = {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp"), ("shutil", "move")}
    offenders = []
    for path in _all_files():
        if path == PACKAGE / "model" / "core" / "files.py":
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
    assert not offenders, f"write through polypindex.model.core.files instead: {offenders}"


def test_one_way_to_get_an_encoder() -> None:
    """Every product path loads the encoder through ``model.runtime.loader.load_encoder`` (the
    runtime choice and the parity check); only the loader builds a runtime class."""
    runtimes = {"OnnxEncoder", "OpenVinoEncoder"}
    allowed = {PACKAGE / "model" / "runtime" / "loader.py"}
    offenders = []
    for path in _all_files():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in runtimes:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not offenders, f"load through polypindex.model.runtime.loader.load_encoder: {offenders}"


# The store layer (docs/architecture.md#the-store): the only modules that build engines or
# open sessions.
STORE_LAYER = {
    PACKAGE / "indexer" / name
    for name in (
        "store.py",
        "store_views.py",
        "store_entities.py",
        "store_access.py",
        "job_store.py",
        "store_changes.py",
        "store_schema.py",
        "migrations/env.py",
    )
}


def _session_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``create_engine`` / ``sessionmaker`` named (imports included), ``Session(...)`` called,
    ``.sessions`` read: ``(line, what)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in ("create_engine", "sessionmaker"):
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.Name) and node.id in ("create_engine", "sessionmaker"):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute) and node.attr in (
            "create_engine",
            "sessionmaker",
            "sessions",
        ):
            yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "Session":
                yield node.lineno, "Session(...)"


def test_sessions_only_in_the_store_layer() -> None:
    """Engines and sessions are made only by the store layer; every other module calls it."""
    offenders, idle = [], []
    for path in _all_files():
        uses = list(_session_uses(ast.parse(path.read_text(), filename=str(path))))
        if path in STORE_LAYER:
            idle += [] if uses else [str(path.relative_to(ROOT))]
        else:
            offenders += [f"{path.relative_to(ROOT)}:{line} {what}" for line, what in uses]
    assert not offenders, f"go through the store layer (indexer/store*.py): {offenders}"
    assert not idle, f"STORE_LAYER lists modules that open no session: {idle}"
    assert all(p.is_file() for p in STORE_LAYER)
