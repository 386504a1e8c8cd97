"""The counting benchmark: its metrics on constructed cases (ARI against sklearn's) and
one small end-to-end run on generated data with a hand-built ONNX encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder
from helpers.synth import small_synth

from polypindex.benchmarks.counting import adjusted_rand_index, evaluate_labels, run_counting
from polypindex.model.data.config import FragmentConfig, PreprocessConfig


def test_ari_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        t = rng.integers(0, 4, n).tolist()
        p = rng.integers(0, 5, n).tolist()
        assert adjusted_rand_index(t, p) == pytest.approx(metrics.adjusted_rand_score(t, p))
    assert adjusted_rand_index(["a", "a"], [0, 0]) == 1.0


def test_counting_metrics_on_a_constructed_case() -> None:
    # polyp A seen 3 times split into 2 entities; B and C merged into one
    truth = ["A", "A", "A", "B", "C"]
    pred = np.array([0, 0, 1, 2, 2])
    m = evaluate_labels([(truth, pred)])
    # different-polyp pairs: 3*2 (A-B, A-C) + 1 (B-C) = 7, merged: B-C
    assert m["merge_fp_rate"] == pytest.approx(1 / 7)
    assert m["fragmentation"] == pytest.approx(1 / 3)  # A has one extra entity
    assert m["count_errors"] == [0] and m["polyps"] == 3
    perfect = evaluate_labels([(truth, np.array([0, 0, 0, 1, 2]))])
    assert (perfect["merge_fp_rate"], perfect["fragmentation"], perfect["ari_mean"]) == (0, 0, 1)


def test_run_counting_end_to_end(tmp_path: Path) -> None:
    from polypindex.synth import generate

    data = tmp_path / "synth"
    generate(
        data,
        small_synth(procedures=5, frames=400, size=(96, 80), tracklet_length=(30, 40), seed=3),
    )
    meta = onnx_metadata(
        "meancolour-v1",
        PreprocessConfig(im_size=16),
        FragmentConfig(stride=2, fragment_length=-1, max_frames=4),
        8,
        "0.6",
    )
    weight = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    model = write_mean_colour_encoder(
        tmp_path / "m.onnx", weight, np.zeros(8, np.float32), meta, im_size=16
    )
    out = tmp_path / "out"
    result = run_counting(
        data, [("a", model), ("b", model)], [("u", model)], out=out, progress=False
    )
    saved = json.loads((out / "counting.json").read_text())
    assert saved["test_procedures"] >= 1 and "environment" in saved
    for method in ("average", "complete", "components"):
        agg = result["trained_aggregate"][method]["chosen_on_fit"]
        assert agg["fragmentation"]["n"] in (0, 2)
    single = result["baselines"]["one_per_tracklet"]["chosen_on_fit"]
    assert single["merge_fp_rate"] == 0.0 and single["count_error_mean"] >= 0
    assert "| one_per_tracklet |" in result["table"]
    assert (out / "fragmentation_vs_merge_fp.png").stat().st_size > 0
    assert (out / "reliability.png").stat().st_size > 0
    cal = result["trained"][0]["calibration"]
    assert cal["test"]["n_pairs"] > 0 and 0 <= cal["test"]["ece_after"] <= 1
