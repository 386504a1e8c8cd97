"""The linker benchmarks' own parts: bursty misses of the simulated detector, the majority
identity of a linked tracklet and its false tracklets, and one small end-to-end run of
benchmarks.linker_effect on generated data with a hand-built ONNX encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder
from helpers.synth import small_synth

from polypindex.benchmarks.linker_effect import Truth, linked_tracklets, main
from polypindex.benchmarks.linkers import make_detections
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polypindex.synth import generate

    root = tmp_path_factory.mktemp("synth") / "synth"
    config = small_synth(procedures=6, frames=400, size=(96, 80), tracklet_length=(30, 40), seed=3)
    generate(root, config)
    return root


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def test_misses_keep_their_fraction_and_come_in_bursts() -> None:
    n = 20000
    gt = np.column_stack([np.arange(n), np.zeros(n), np.full((n, 4), 10.0)])
    gt[:, 4:] = 20.0
    for burst in (1.0, 4.0):
        frames, _, _ = make_detections(gt, np.random.default_rng(0), 0.2, 0.0, 0.0, (64, 64), burst)
        missed = ~np.isin(np.arange(n), frames)
        assert missed.mean() == pytest.approx(0.2, abs=0.02)
        assert np.mean(_runs(missed)) == pytest.approx(1 / 0.8 if burst == 1 else burst, rel=0.15)
    # burst 1 is each box on its own: the very draw the iid detector made before bursts
    frames, _, _ = make_detections(gt, np.random.default_rng(5), 0.2, 0.0, 0.0, (64, 64))
    keep = np.random.default_rng(5).random(n) >= 0.2
    assert frames.tolist() == np.flatnonzero(keep).tolist()


def test_linked_tracklets_take_the_majority_polyp_and_false_ones_their_own(data: Path) -> None:
    split = load_coco_split(data, "test")
    truth = Truth(split)
    annotated = split.tracklets(TrackletConfig())
    seq = annotated[0].sequence_id
    mine = [t for t in annotated if t.sequence_id == seq]
    frames = np.concatenate([t.frame_ids for t in mine])
    boxes = np.concatenate([t.boxes for t in mine]).astype(np.float64)
    # a false track: a tiny corner box on the first tracklet's frames, overlapping no polyp
    fake = annotated[0].frame_ids
    frames = np.concatenate([frames, fake])
    boxes = np.concatenate([boxes, np.tile([[0.0, 0.0, 3.0, 3.0]], (len(fake), 1))])
    dets = {seq: (frames, boxes, np.full(len(frames), 0.9))}
    tracklets, purity, covered = linked_tracklets(truth, dets, "greedy", TrackletConfig())
    real = [t for t in tracklets if not t.metadata["false"]]
    false = [t for t in tracklets if t.metadata["false"]]
    assert len(false) == 1 and false[0].identity_id == f"false:{seq}:{tracklets.index(false[0])}"
    assert sorted((t.identity_id, t.start_frame) for t in real) == sorted(
        (t.identity_id, t.start_frame) for t in mine
    )
    assert covered == sum(len(t) for t in mine)
    assert sorted(purity) == [0.0] + [1.0] * len(real)
    assert all(len(t.image_paths) == len(t) for t in tracklets)


def test_linker_effect_end_to_end(data: Path, tmp_path: Path) -> None:
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
    out = tmp_path / "effect.json"
    work = tmp_path / "work"
    args = ["--model", str(model), "--set", f"small={data}", "--seeds", "0"]
    main([*args, "--separations", "1", "5", "--work", str(work), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["sets"]["small"]["summary"]
    assert list(rows) == [
        "annotated",
        "bytetrack/sep1",
        "bytetrack/sep5",
        "greedy/sep1",
        "greedy/sep5",
    ]
    assert rows["annotated"]["purity"]["mean"] == 1.0
    assert rows["annotated"]["false_tracklets"]["mean"] == 0
    # misses cut every track under the one-frame gap rule: fewer tracklets than with five
    for linker in ("bytetrack", "greedy"):
        assert (
            rows[f"{linker}/sep1"]["tracklets"]["mean"]
            < rows[f"{linker}/sep5"]["tracklets"]["mean"]
        )
    assert 0.5 <= result["grouping"]["cut"] <= 1.0
    assert "| bytetrack/sep5 |" in result["table"]
