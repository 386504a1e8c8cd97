"""The command line: every command has help; the one error boundary maps a project or
input error to exit 1 with ``error: ...``, a usage error to 2 and Ctrl-C to 130;
``--version``; locations come from ``POLYPINDEX_*`` unless an option is given."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import polypindex.cli.serve as cli_serve
from polypindex.cli import app

runner = CliRunner()
COMMANDS = [
    ["synth"],
    ["train"],
    ["export"],
    ["index"],
    ["delete"],
    ["serve"],
    ["demo"],
    ["bench", "retrieval"],
    ["bench", "reid"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--help" in result.output


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"polypindex {version('polypindex')}"


def test_export_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "nope.pt" in result.output
    assert not (tmp_path / "m.onnx").exists()


# runtime errors (exit 1): the arguments ({tmp}: a fresh folder) and what the message names
RUNTIME_ERRORS = {
    "index with a missing model": (
        ["index", "{tmp}", "--model", "{tmp}/none.onnx", "--home", "{tmp}"],
        ["none.onnx"],
    ),
    "bench on a missing dataset": (
        ["bench", "retrieval", "--data", "{tmp}/nodata", "--model", "x=m.onnx", "--out", "{tmp}"],
        ["annotation file not found"],
    ),
    "train with an unknown override": (
        ["train", "--data", "{tmp}", "--out", "{tmp}/o", "--set", "no_such_field=3"],
        ["no_such_field"],
    ),
    "synth with no procedures": (
        ["synth", "--out", "{tmp}", "--procedures", "0"],
        ["n_procedures"],
    ),
    "synth interleave above 1": (
        ["synth", "--out", "{tmp}", "--interleave", "1.5"],
        ["interleave"],
    ),
    "synth negative lookalikes": (
        ["synth", "--out", "{tmp}", "--lookalike-fraction", "-0.1"],
        ["lookalike_fraction"],
    ),
    "synth empty polyp range": (
        ["synth", "--out", "{tmp}", "--polyps", "3", "2"],
        ["polyps_per_procedure"],
    ),
    "synth unknown preset": (
        ["synth", "--out", "{tmp}", "--preset", "neon"],
        ["--preset", "neon", "shifted"],
    ),
}


@pytest.mark.parametrize(("args", "names"), RUNTIME_ERRORS.values(), ids=RUNTIME_ERRORS.keys())
def test_runtime_errors_exit_1_with_a_named_error(
    tmp_path: Path, args: list[str], names: list[str]
) -> None:
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    assert all(name in result.output for name in names), result.output


def test_a_project_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    """In a real process: stderr holds the one ``error:`` line, stdout nothing."""
    command = ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]
    proc = subprocess.run(
        [sys.executable, "-m", "polypindex.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "nope.pt" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["synth"],  # a missing required option
        ["synth", "--out", "x", "--procedures", "many"],  # not an integer
        ["synth", "--out", "x", "--no-such-option"],
        ["no-such-command"],
    ],
    ids=["missing option", "bad value", "unknown option", "unknown command"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Usage" in result.output and "error:" not in result.output


def test_ctrl_c_exits_130_with_a_short_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("polypindex.synth.generate", interrupted)
    result = runner.invoke(app, ["synth", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Traceback" not in result.output


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What ``polypindex serve`` would serve, instead of serving it."""
    settings: list[Any] = []
    names = ("HOME", "MODEL_PATH", "DATABASE_URL", "INDEX_DIR", "PROBES_DIR", "HOST", "PORT")
    for name in (*names, "AUTH"):
        monkeypatch.delenv(f"POLYPINDEX_{name}", raising=False)
    monkeypatch.setattr(cli_serve, "_run", settings.append)
    return settings


def test_environment_is_honoured_when_no_option_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: list[Any]
) -> None:
    monkeypatch.setenv("POLYPINDEX_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("POLYPINDEX_MODEL_PATH", str(tmp_path / "env.onnx"))
    monkeypatch.setenv("POLYPINDEX_INDEX_DIR", str(tmp_path / "env-index"))
    monkeypatch.setenv("POLYPINDEX_HOST", "0.0.0.0")
    monkeypatch.setenv("POLYPINDEX_PORT", "8123")
    monkeypatch.setenv("POLYPINDEX_AUTH", "keys")
    assert runner.invoke(app, ["serve"]).exit_code == 0
    (settings,) = served
    assert (settings.host, settings.port, settings.auth) == ("0.0.0.0", 8123, "keys")
    assert settings.home == (tmp_path / "env-home").resolve()
    assert settings.model_path == tmp_path / "env.onnx"
    assert settings.index_dir == tmp_path / "env-index"
    assert settings.database_url.endswith(f"{tmp_path / 'env-home' / 'index' / 'polypindex.db'}")


def test_an_option_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: list[Any]
) -> None:
    monkeypatch.setenv("POLYPINDEX_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("POLYPINDEX_MODEL_PATH", str(tmp_path / "env.onnx"))
    monkeypatch.setenv("POLYPINDEX_DATABASE_URL", "sqlite:///env.db")
    monkeypatch.setenv("POLYPINDEX_HOST", "0.0.0.0")
    args = ["serve", "--home", str(tmp_path / "cli-home"), "--model", str(tmp_path / "cli.onnx")]
    args += ["--host", "127.0.0.2", "--port", "9001"]
    assert runner.invoke(app, [*args, "--database-url", "sqlite:///cli.db"]).exit_code == 0
    (settings,) = served
    assert settings.home == (tmp_path / "cli-home").resolve()
    assert settings.model_path == tmp_path / "cli.onnx"
    assert settings.database_url == "sqlite:///cli.db"
    assert settings.index_dir == (tmp_path / "cli-home").resolve() / "index"
    assert (settings.host, settings.port) == ("127.0.0.2", 9001)


def test_db_upgrade_writes_under_the_home_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    monkeypatch.setenv("POLYPINDEX_HOME", str(tmp_path / "env-home"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert (tmp_path / "env-home" / "index" / "polypindex.db").is_file()
    result = runner.invoke(app, ["db", "upgrade", "--home", str(tmp_path / "cli-home")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-home" / "index" / "polypindex.db").is_file()
