"""The wheel installs one top-level package, ``polypindex``, with the linked layers,
the presets and the migrations inside it, and no test helpers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "var", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "polypindex"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=lambda _d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")],
    )
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("polypindex-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_one_top_level_package(wheel_names: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"polypindex"}, sorted(tops)


@pytest.mark.parametrize(
    "member",
    [
        "polypindex/model/nets/encoder.py",
        "polypindex/training/configs/demo.yaml",
        "polypindex/indexer/migrations/env.py",
        "polypindex/indexer/migrations/script.py.mako",
        "polypindex/service/app.py",
        "polypindex/benchmarks/protocols.py",
        "polypindex/service/ui/index.html",
        "polypindex/service/ui/app.js",
        "polypindex/service/ui/map.js",
        "polypindex/service/ui/style.css",
    ],
)
def test_layers_presets_and_migrations_are_inside(wheel_names: list[str], member: str) -> None:
    assert member in wheel_names


def test_no_test_helpers_in_the_wheel(wheel_names: list[str]) -> None:
    assert not [n for n in wheel_names if n.endswith("/testing.py") or "/tests/" in n]


def test_the_unpacked_wheel_imports_on_its_own(wheel: Path, tmp_path: Path) -> None:
    """The wheel's files alone (not this checkout) are a working package: the service,
    the CLI and the packaged migrations load from the unpacked wheel."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import polypindex.service.app, polypindex.cli, polypindex.model.nets.encoder as e;"
        "from polypindex.indexer.migrate import MIGRATIONS_DIR as m;"
        "from polypindex.training.presets import available_presets as a;"
        "print(e.__file__); print(m); print(sorted(a()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site)), out
    assert (Path(out[1]) / "env.py").is_file()
    assert "demo" in out[2]
