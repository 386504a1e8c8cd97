"""What can be checked of the container files without a Docker engine: they parse,
the image installs with the same step CI runs, and compose wires API + PostgreSQL +
a volume consistently with the settings the code reads."""

from __future__ import annotations

import re
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
    assert "pip install --quiet -e '.[$(EXTRAS)]'" in makefile
    # every package the installer needs is copied before the install step
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    for package in ("model", "training", "indexer", "service", "benchmarks", "polypindex"):
        assert package in copied, f"Dockerfile does not COPY {package}/"
    assert {"pyproject.toml", "Makefile", "README.md"} <= set(
        re.search(r"^COPY (.+) \./$", dockerfile, re.M).group(1).split()  # type: ignore[union-attr]
    )


def test_compose_wires_api_postgres_and_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"db", "api", "builder"} <= set(services)
    api = services["api"]
    assert api["build"]["args"]["EXTRAS"] == "postgres"
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
