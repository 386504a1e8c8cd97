"""The command line: every command has help, and bad input exits 2 with a named error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

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


def test_export_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "nope.pt" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_index_with_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["index", str(tmp_path), "--model", str(tmp_path / "none.onnx"), "--home", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "none.onnx" in result.output


def test_bench_on_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "retrieval",
            "--data",
            str(tmp_path / "nodata"),
            "--model",
            "x=m.onnx",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "annotation file not found" in result.output


def test_train_with_unknown_override_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "no_such_field=3",
        ],
    )
    assert result.exit_code == 2
    assert "no_such_field" in result.output


def test_synth_rejects_bad_values(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--procedures", "0"])
    assert result.exit_code == 2
    assert "n_procedures" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--interleave", "1.5"])
    assert result.exit_code == 2 and "interleave" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--lookalike-fraction", "-0.1"])
    assert result.exit_code == 2 and "lookalike_fraction" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--polyps", "3", "2"])
    assert result.exit_code == 2 and "polyps_per_procedure" in result.output
