"""``polypindex keys create|list|revoke`` and ``polypindex audit``, on SQLite and
PostgreSQL; ``polypindex serve`` refuses a public bind without keys before it binds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.databases import BACKENDS, backend_url, sqlite_url
from typer.testing import CliRunner

from polypindex.cli import app
from polypindex.indexer.keys import verify_token
from polypindex.indexer.store import Store

runner = CliRunner()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from backend_url(request.param, tmp_path)


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_create_list_revoke_and_audit(db_url: str) -> None:
    code, token, err = cli("keys", "create", "ops", "--scope", "write", "--database-url", db_url)
    assert code == 0, err
    token = token.strip()
    assert token.startswith("pxk_") and "\n" not in token  # the token alone on stdout
    assert "shown only now" in err
    with Store(db_url) as store:
        key = verify_token(store, token)
        assert key is not None and (key.name, key.scope) == ("ops", "write")

    code, out, _ = cli("keys", "list", "--database-url", db_url, "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["name"] == "ops" and listed["scope"] == "write" and listed["active"] is True
    assert token not in out
    code, out, _ = cli("keys", "list", "--database-url", db_url)
    assert code == 0 and "ops\twrite" in out and token not in out

    assert cli("keys", "revoke", "ops", "--database-url", db_url)[0] == 0
    with Store(db_url) as store:
        assert verify_token(store, token) is None
    code, out, _ = cli("keys", "list", "--database-url", db_url, "--json")
    assert json.loads(out)[0]["active"] is False

    code, out, _ = cli("audit", "--database-url", db_url, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["action"] for r in rows] == ["keys revoke", "keys create"]  # newest first
    assert all(r["actor"].startswith("cli") and r["status"] in (200, 201) for r in rows)
    assert rows[0]["target"] == "ops"
    code, out, _ = cli("audit", "--database-url", db_url, "--limit", "1")
    assert code == 0 and len(out.strip().splitlines()) == 1 and "keys revoke" in out


def test_key_errors_exit_1_naming_the_problem(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db")
    assert cli("keys", "create", "ops", "--database-url", url)[0] == 0  # scope read by default
    code, _, err = cli("keys", "create", "ops", "--database-url", url)
    assert code == 1 and "exists already" in err
    code, _, err = cli("keys", "create", "x", "--scope", "root", "--database-url", url)
    assert code == 1 and "unknown scope 'root'" in err
    code, _, err = cli("keys", "create", "bad name!", "--database-url", url)
    assert code == 1 and "bad key name" in err
    code, _, err = cli("keys", "revoke", "nobody", "--database-url", url)
    assert code == 1 and "no key named 'nobody'" in err


def test_serve_refuses_a_public_bind_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AUTH", "HOST", "DATABASE_URL", "MODEL_PATH", "INDEX_DIR"):
        monkeypatch.delenv(f"POLYPINDEX_{name}", raising=False)
    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a))
    # the process's logging is left alone (CliRunner's streams close after each call)
    monkeypatch.setattr(
        "polypindex.service.observability.configure_logging", lambda **k: started.clear()
    )
    home = str(tmp_path / "home")
    code, _, err = cli("serve", "--home", home, "--host", "0.0.0.0")
    assert code == 1 and not started
    assert "refusing to serve on 0.0.0.0 without API keys" in err and "keys create" in err
    # with a key in its database, the same command goes on to serve
    assert cli("keys", "create", "admin", "--scope", "admin", "--home", home)[0] == 0
    code, _, err = cli("serve", "--home", home, "--host", "0.0.0.0")
    assert code == 0, err
    assert len(started) == 1


def test_the_image_binds_publicly_so_it_needs_a_key_and_says_how() -> None:
    """The container command binds 0.0.0.0 with the default ``auth="auto"``: without a key
    it is refused (above); the compose file neither opens it nor hides how to make a key."""
    import re

    import yaml

    from polypindex.service.auth import is_loopback

    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "Dockerfile").read_text()
    hosts = re.findall(r'^CMD \["polypindex", "serve", "--host", "([^"]+)"', dockerfile, re.M)
    assert hosts and not any(is_loopback(h) for h in hosts)
    compose_text = (root / "docker-compose.yml").read_text()
    compose = yaml.safe_load(compose_text)
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert env.get("POLYPINDEX_AUTH", "auto") != "open", name
    assert "docker compose run --rm api polypindex keys create" in compose_text
    assert "polypindex keys create" in dockerfile
