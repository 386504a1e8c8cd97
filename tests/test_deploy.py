"""What can be checked of the container files without a Docker engine: they parse,
the image installs with the same step CI runs, and compose wires API + PostgreSQL +
a volume consistently with the settings the code reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci.splitlines()[-1]
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block


def test_dockerfile_uses_the_ci_install_step() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    run_lines = [line for line in dockerfile.splitlines() if line.startswith("RUN make venv")]
    assert run_lines, "the image must install through `make venv`, as CI does"
    assert re.search(r"^\$\(STAMP\): pyproject.toml", makefile, re.M)
    assert "pip install --quiet $(PIN) -e '.[$(EXTRAS)]'" in makefile
    # the dev install (CI) is pinned by the lock file, which the image copies too
    assert re.search(
        r"^PIN\s*:= \$\(if \$\(filter dev,\$\(EXTRAS\)\),-c \$\(LOCK\),\)", makefile, re.M
    )
    assert re.search(r"^LOCK\s*:= requirements-dev.lock$", makefile, re.M)
    assert (ROOT / "requirements-dev.lock").is_file()
    # every package the installer needs is copied before the install step
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    for package in ("model", "training", "indexer", "service", "benchmarks", "polypindex"):
        assert package in copied, f"Dockerfile does not COPY {package}/"
    assert {"pyproject.toml", "Makefile", "README.md", "requirements-dev.lock"} <= set(
        re.search(r"^COPY (.+) \./$", dockerfile, re.M).group(1).split()  # type: ignore[union-attr]
    )


def test_compose_wires_api_postgres_and_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "api", "builder"} <= set(services)
    api = services["api"]
    assert api["build"]["args"]["EXTRAS"] == "cpu,postgres"
    assert services["builder"]["build"]["args"]["EXTRAS"] == "dev"
    url = api["environment"]["POLYPINDEX_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@db:5432/" in url
    db_env = services["db"]["environment"]
    assert (
        f"{db_env['POSTGRES_USER']}:{db_env['POSTGRES_PASSWORD']}@db:5432/{db_env['POSTGRES_DB']}"
        in url
    )
    for name in ("api", "builder"):
        vols = services[name]["volumes"]
        assert any(v.endswith(":/data") for v in vols)
        assert services[name]["environment"]["POLYPINDEX_HOME"] == "/data"
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
    assert {"pgdata", "polypdata"} <= set(compose["volumes"])


def _faiss_extras(extras: str, optional: dict[str, list[str]]) -> set[str]:
    """The FAISS distributions an install with ``extras`` pulls in (following self-references)."""
    found: set[str] = set()
    todo = [e.strip() for e in extras.split(",")]
    while todo:
        for requirement in optional[todo.pop()]:
            if requirement.startswith("polypindex["):
                todo.extend(requirement[len("polypindex[") : -1].split(","))
            elif requirement.startswith("faiss-"):
                found.add(re.split(r"[<>=\[ ]", requirement)[0])
    return found


def test_every_install_gets_exactly_one_faiss() -> None:
    """faiss-cpu and faiss-gpu provide the same module: each install must pick one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    assert _faiss_extras("cpu", optional) == {"faiss-cpu"}
    assert _faiss_extras("gpu", optional) == {"faiss-gpu-cu12"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG EXTRAS=(\S+)$", dockerfile, re.M).group(1)  # type: ignore[union-attr]
    makefile_default = re.search(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    used = [default, makefile_default.group(1)] + [  # type: ignore[union-attr]
        s["build"]["args"]["EXTRAS"] for s in compose.values() if "build" in s
    ]
    for extras in [*used, "gpu,postgres"]:
        assert len(_faiss_extras(extras, optional)) == 1, extras
