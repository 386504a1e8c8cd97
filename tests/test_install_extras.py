"""Every documented install holds exactly one ONNX Runtime and one FAISS distribution.

The extras are read from pyproject.toml and expanded (``polypindex[cpu,...]`` inside an
extra), so a new extra or a moved dependency is checked without editing this file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from polypindex.model.runtime.install import (
    FAISS_DISTRIBUTIONS,
    ONNX_RUNTIME_DISTRIBUTIONS,
    install_problems,
)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _used_extras() -> list[str]:
    """The installs the Makefile, the Dockerfile's targets and compose's services make."""
    used = re.findall(r"^ARG EXTRAS=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    used += re.findall(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    used += [s["build"]["args"]["EXTRAS"] for s in services.values() if "build" in s]
    return used


# Those, and the ones docs/gpu.md names.
DOCUMENTED = sorted({*_used_extras(), "cpu", "gpu", "gpu,postgres"})


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def _distributions(extras: str) -> set[str]:
    """The distribution names an install of ``polypindex[extras]`` asks for directly."""
    names = {_name(r) for r in PROJECT["dependencies"]}
    todo = extras.split(",")
    seen: set[str] = set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in PROJECT["optional-dependencies"][extra]:
            if requirement.startswith("polypindex["):
                todo += requirement[len("polypindex[") : requirement.index("]")].split(",")
            else:
                names.add(_name(requirement))
    return names


@pytest.mark.parametrize("extras", DOCUMENTED)
def test_each_documented_install_has_one_onnx_runtime_and_one_faiss(extras: str) -> None:
    names = _distributions(extras)
    assert len(names & set(ONNX_RUNTIME_DISTRIBUTIONS)) == 1, (extras, sorted(names))
    assert len(names & set(FAISS_DISTRIBUTIONS)) == 1, (extras, sorted(names))


def test_the_files_name_both_targets_installs() -> None:
    assert {"cpu,postgres", "gpu,tensorrt,postgres", "dev"} <= set(_used_extras())


def test_the_gpu_install_brings_the_gpu_builds() -> None:
    names = _distributions("gpu")
    assert {"onnxruntime-gpu", "faiss-gpu-cu12"} <= names
    assert not names & {"onnxruntime", "faiss-cpu"}


def test_the_base_install_brings_neither() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert not base & set(ONNX_RUNTIME_DISTRIBUTIONS + FAISS_DISTRIBUTIONS)


def test_this_environment_is_a_clean_install() -> None:
    assert install_problems() == []


def test_a_clashing_install_is_named() -> None:
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1", "faiss-cpu": "1.15.1"}
    problems = install_problems(versions.get)
    assert len(problems) == 1
    assert "2 ONNX Runtime distributions" in problems[0]
    assert "onnxruntime 1.32.0" in problems[0] and "onnxruntime-gpu 1.31.1" in problems[0]


def test_a_missing_family_is_named() -> None:
    problems = install_problems({"onnxruntime": "1.32.0"}.get)
    assert problems == [
        "no FAISS is installed: install polypindex with the 'cpu' or the 'gpu' extra"
    ]
