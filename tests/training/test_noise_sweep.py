"""benchmarks/noise_sweep.py at tiny settings: per level both losses train on the same bags
(``--train-only`` runs are reused by the evaluating pass), the wrong-member rate is
measured with the runs' own settings, and the JSON and the plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.synth import small_synth

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from polypindex.benchmarks.bag_noise import measure
from polypindex.benchmarks.noise_sweep import main
from polypindex.model.data.config import FragmentConfig


def test_tiny_sweep(tmp_path: Path) -> None:
    synth = pytest.importorskip("polypindex.synth")
    data = tmp_path / "discs"
    synth.generate(
        data,
        small_synth(procedures=6, frames=300, size=(96, 80), tracklet_length=(30, 50)),
        progress=False,
    )
    out = tmp_path / "sweep"
    sets = ["--set", "epochs=2", "--set", "max_steps_per_epoch=1", "--set", "batch_size=6"]
    common = [
        "--level",
        f"discs={data}",
        "--out",
        str(out),
        "--seeds",
        "0",
        "--config",
        "test_tiny",
    ]

    main([*common, "--train-only", "mil_nce", *sets])
    trained = out / "discs" / "seed0" / "mil_nce"
    assert (trained / "encoder.pt").is_file() and (trained / "wall_seconds.txt").is_file()
    first_wall = (trained / "wall_seconds.txt").read_text()
    assert not (out / "noise_sweep.json").exists()

    main([*common, *sets])
    assert (trained / "wall_seconds.txt").read_text() == first_wall  # reused, not retrained
    result = json.loads((out / "noise_sweep.json").read_text())
    assert (out / "noise_sweep.png").stat().st_size > 0
    assert result["budget"]["optimisation_steps_per_run"] == 2
    assert result["budget"]["batch_size"] == 6
    (level,) = result["levels"]
    assert set(level["losses"]) == {"mil_nce", "plain_multi_positive"}
    for loss in level["losses"].values():
        assert len(loss["per_seed"]) == 1 and 0.0 <= loss["mean"] <= 1.0
        assert loss["train_wall_seconds"][0] > 0
    gap = level["mil_nce_minus_plain"]["mean"]
    mil, plain = (level["losses"][k]["mean"] for k in ("mil_nce", "plain_multi_positive"))
    assert gap == pytest.approx(mil - plain)
    # the rate is the one the runs' bags have: measured with their fragments, views, epochs
    fragment = FragmentConfig(stride=2, fragment_length=4, max_frames=16)  # test_tiny's
    direct = measure(data, epochs=2, fragment=fragment, n_views=3, batch_size=6)
    assert level["wrong_member_rate"] == pytest.approx(direct["mean_wrong_member_rate"])
    assert 0.0 <= level["wrong_member_rate"] <= 1.0
