"""polypindex.benchmarks.results_table: per-row overrides, {seed} substitution, the val-mAP plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypindex.benchmarks.results_table import _pair, _row_spec, _with_seed, plot_val_map


def test_row_spec_and_seed_substitution() -> None:
    config, overrides = _row_spec(
        "demo,loss=multi_positive,epochs=3,init_frame_encoder=m/s{seed}.pt"
    )
    assert config == "demo"
    assert overrides == {
        "loss": "multi_positive",
        "epochs": 3,
        "init_frame_encoder": "m/s{seed}.pt",
    }
    assert _with_seed(overrides["init_frame_encoder"], 2) == "m/s2.pt"
    assert _with_seed(3, 2) == 3
    assert _row_spec("supervised") == ("supervised", {})
    with pytest.raises(SystemExit, match="key=value"):
        _row_spec("demo,epochs")
    assert _pair("ssl=demo,loss=x", "--row") == ("ssl", "demo,loss=x")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        _pair("demo", "--row")


def test_val_map_plot_is_written(tmp_path: Path) -> None:
    history = {"history": [{"val_map": v} for v in (0.2, 0.3, 0.35)]}
    compute = {"seed0": {"a": history}, "seed1": {"a": history, "b": history}}
    plot_val_map(compute, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
