"""What can be checked of the container files without a Docker engine: they parse,
the image installs with the same step CI runs, and compose wires API + PostgreSQL +
a volume consistently with the settings the code reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
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
    # every package the installer needs is copied (once, into the shared `source` stage)
    # and every target takes the whole of it before its install step
    source = dockerfile.split("FROM scratch AS source", 1)[1].split("\nFROM ", 1)[0]
    copied = set(re.findall(r"^COPY (\S+) /app/\1$", source, re.M))
    # the package folder holds every file; the top-level layer folders are links into it
    assert "polypindex" in copied, "Dockerfile does not COPY polypindex/"
    for layer in ("model", "training", "indexer", "service", "benchmarks"):
        assert (ROOT / layer).resolve() == (ROOT / "polypindex" / layer).resolve(), layer
    assert {"pyproject.toml", "Makefile", "README.md", "requirements-dev.lock"} <= set(
        re.search(r"^COPY (.+) /app/$", source, re.M).group(1).split()  # type: ignore[union-attr]
    )
    targets = re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M)
    assert [name for _, name in targets] == ["source", "gpu", "cpu"]  # cpu last: the default
    for stage in dockerfile.split("\nFROM ")[2:]:
        lines = stage.splitlines()
        copy_at = lines.index("COPY --from=source /app /app")
        assert any(line.startswith("RUN make venv") for line in lines[copy_at:])


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


def test_compose_gpu_profile_reserves_a_gpu_and_builds_the_gpu_target() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    assert gpu["build"]["args"]["EXTRAS"].split(",")[0] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # both APIs can run at once: different host ports, loopback only
    ports = {name: services[name]["ports"][0] for name in ("api", "api-gpu")}
    assert len(set(ports.values())) == 2
    assert all(p.startswith("127.0.0.1:") for p in ports.values())
    assert {services[name]["build"]["target"] for name in ("api", "builder")} == {"cpu"}


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)
def test_compose_file_validates() -> None:
    """`docker-compose config` parses and resolves the file (no engine needed)."""
    run = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "gpu",
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_container_health_checks_ask_readiness() -> None:
    """The image's HEALTHCHECK (both targets) and compose's API services probe `/readyz`
    (503 until model, store and index are ready), never the always-200 `/healthz`."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    checks = re.findall(r"^HEALTHCHECK .*\\\n\s+CMD (.+)$", dockerfile, re.M)
    assert len(checks) == 2, checks  # the gpu and the cpu target
    assert all("/readyz" in c and "/healthz" not in c for c in checks)
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("api", "api-gpu"):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/readyz" in test, name
