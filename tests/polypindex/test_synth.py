"""The synthetic colonoscopy generator: format, determinism, trackleting, labels."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.synth import small_synth
from pycocotools.coco import COCO

from polypindex.synth import (
    HISTOLOGIES,
    MIN_GAP,
    PALETTES,
    SYNTH_PRESETS,
    SynthConfig,
    generate,
    plan,
    split_procedures,
    synth_preset,
)
from polypindex.synth.config import seeded_rng
from polypindex.synth.render import _camera_path

TINY = small_synth(procedures=3, frames=160, size=(96, 80), tracklet_length=(30, 60))
# sha256 over every file of the TINY dataset (relative path, NUL, bytes; sorted by path),
# recorded before polypindex.synth was split into modules: the split changed no byte.
# It depends on the pinned numpy/OpenCV (requirements-dev.lock); a deliberate change of
# the generator or of those versions records a new value.
TINY_SHA256 = "36cd60fc5dbb40f4a3310a2d09a13df6c049dbd58ad852677a7ab5796adc8052"
SPLITS = ("train", "val", "test")
Dataset = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, TINY, progress=False)


def _load(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update((root / "annotations" / f"instances_{split}.json").read_bytes())
    for p in sorted((root / "images").glob("*.jpg"))[::20]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _spec_tracklets(data: dict[str, Any]) -> dict[str, list[list[tuple[int, list[float]]]]]:
    """The tracklet rule (docs/method.md#tracklets) per identity: split when the frame gap > 1
    or IoU with the previous box < 0.1."""
    frame_of = {img["id"]: img["frame_id"] for img in data["images"]}
    per_identity: dict[str, list[tuple[int, list[float]]]] = defaultdict(list)
    for ann in data["annotations"]:
        per_identity[ann["identity_id"]].append((frame_of[ann["image_id"]], ann["bbox"]))
    out: dict[str, list[list[tuple[int, list[float]]]]] = {}
    for identity, items in per_identity.items():
        items.sort(key=lambda fb: fb[0])
        tracklets = [[items[0]]]
        for prev, cur in itertools.pairwise(items):
            if cur[0] - prev[0] > 1 or _iou(prev[1], cur[1]) < 0.1:
                tracklets.append([])
            tracklets[-1].append(cur)
        out[identity] = tracklets
    return out


def test_same_seed_same_bytes_other_seed_differs(tiny: Dataset, tmp_path: Path) -> None:
    root, report = tiny
    again = tmp_path / "again"
    assert generate(again, TINY, progress=False) == report
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    generate(other, dataclasses.replace(TINY, seed=1), progress=False)
    assert _load(other, "train") != _load(root, "train")
    assert _digest(other) != _digest(root)


def test_fixed_seed_gives_the_recorded_bytes(tiny: Dataset) -> None:
    root, _ = tiny
    assert _tree_sha256(root) == TINY_SHA256, "the generator's output changed"


def test_parallel_workers_give_the_same_dataset(tiny: Dataset, tmp_path: Path) -> None:
    root, _ = tiny
    par = tmp_path / "par"
    generate(par, dataclasses.replace(TINY, workers=2), progress=False)
    assert _digest(par) == _digest(root)


def test_format_has_every_field_and_loads_in_pycocotools(tiny: Dataset) -> None:
    root, report = tiny
    image_ids: set[int] = set()
    ann_ids: set[int] = set()
    for split in SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        coco = COCO(str(path))
        data = _load(root, split)
        assert data["categories"] == [{"id": 1, "name": "polyp"}]
        assert data["info"]["split"] == split and data["info"]["seed"] == TINY.seed
        assert len(coco.imgs) == report["splits"][split]["frames"] == len(data["images"])
        assert len(coco.anns) == report["splits"][split]["annotations"]
        for img in data["images"]:
            assert set(img) == {
                "id",
                "file_name",
                "width",
                "height",
                "frame_id",
                "sequence_id",
                "dataset_id",
            }
            assert (img["width"], img["height"]) == (TINY.image_width, TINY.image_height)
            assert img["dataset_id"] == "synth"
            assert re.fullmatch(r"\d{3}-001", img["sequence_id"])
            assert img["file_name"] == f"{img['sequence_id']}_{img['frame_id']:06d}.jpg"
            assert 0 <= img["frame_id"] < TINY.frames_per_procedure
            assert (root / "images" / img["file_name"]).is_file()
            assert coco.getAnnIds(imgIds=[img["id"]]), "only frames showing a polyp are written"
        for ann in data["annotations"]:
            assert {
                "id",
                "image_id",
                "bbox",
                "area",
                "iscrowd",
                "category_id",
                "identity_id",
                "size",
                "histology",
                "morphology",
                "location",
            } <= set(ann)
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            assert ann["histology"] in HISTOLOGIES
            assert isinstance(ann["size"], float) and ann["size"] > 0
            assert ann["identity_id"].startswith(coco.imgs[ann["image_id"]]["sequence_id"] + "_p")
        image_ids |= set(coco.imgs)
        ann_ids |= set(coco.anns)
    assert len(image_ids) == sum(report["splits"][s]["frames"] for s in SPLITS)
    assert len(ann_ids) == sum(report["splits"][s]["annotations"] for s in SPLITS)


def test_every_box_is_inside_its_image_with_positive_size(tiny: Dataset) -> None:
    root, _ = tiny
    touching_edge = 0
    for split in SPLITS:
        data = _load(root, split)
        size = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = size[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0, ann
            assert x + w <= width and y + h <= height, ann
            assert ann["area"] == pytest.approx(w * h)
            touching_edge += x == 0 or y == 0 or x + w == width or y + h == height
    assert touching_edge > 0, "polyps partly outside the frame should be clipped, not avoided"


def test_each_generated_run_is_one_spec_tracklet(tiny: Dataset) -> None:
    root, report = tiny
    planned = {spec.identity_id: spec.runs for proc in plan(TINY) for spec in proc}
    lo, hi = TINY.tracklet_length
    for split in SPLITS:
        tracklets = _spec_tracklets(_load(root, split))
        assert sum(map(len, tracklets.values())) == report["splits"][split]["tracklets"]
        for identity, runs in tracklets.items():
            assert [(t[0][0], len(t)) for t in runs] == list(planned[identity])
            for t in runs:
                assert lo <= len(t) <= hi
                assert all(b[0] - a[0] == 1 for a, b in itertools.pairwise(t))
                assert min(_iou(a[1], b[1]) for a, b in itertools.pairwise(t)) >= 0.5
            for a, b in itertools.pairwise(runs):  # the camera loses it in between
                assert b[0][0] - a[-1][0] > MIN_GAP


def test_splits_are_disjoint_by_procedure(tiny: Dataset) -> None:
    root, report = tiny
    seqs = [set(report["splits"][s]["sequence_ids"]) for s in SPLITS]
    assert all(len(s) == 1 for s in seqs)
    assert set.union(*seqs) == {"001-001", "002-001", "003-001"}
    for split, expected in zip(SPLITS, seqs, strict=True):
        data = _load(root, split)
        assert {img["sequence_id"] for img in data["images"]} == expected
    ids = [{a["identity_id"] for a in _load(root, s)["annotations"]} for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    ten = split_procedures(dataclasses.replace(TINY, n_procedures=10))
    assert [len(ten[s]) for s in SPLITS] == [6, 2, 2]
    assert sorted(ten["train"] + ten["val"] + ten["test"]) == list(range(10))


def test_report_counts_match_the_annotations(tiny: Dataset) -> None:
    root, report = tiny
    assert json.loads((root / "synth_report.json").read_text()) == report
    assert report["seed"] == TINY.seed and report["config"]["n_procedures"] == 3
    for split in SPLITS:
        anns = _load(root, split)["annotations"]
        polyps = {a["identity_id"]: a for a in anns}
        row = report["splits"][split]
        assert row["polyps"] == len(polyps)
        assert row["diminutive_le_5mm"] + row["larger_gt_5mm"] == len(polyps)
        assert row["diminutive_le_5mm"] == sum(a["size"] <= 5 for a in polyps.values())
        assert row["adenoma"] == sum(a["histology"] == "adenoma" for a in polyps.values())


def test_labels_cover_both_classes_and_tracklets_interleave() -> None:
    procs = plan(SynthConfig(n_procedures=12, seed=3))
    polyps = [p for proc in procs for p in proc]
    assert 0.2 < np.mean([p.size_mm <= 5 for p in polyps]) < 0.6
    assert {p.histology == "adenoma" for p in polyps} == {True, False}
    alternations = overlaps = 0
    for proc in procs:
        runs = sorted((s, s + n, p.identity_id) for p in proc for s, n in p.runs)
        for a, b in itertools.pairwise(runs):
            alternations += a[2] != b[2]
            overlaps += b[0] < a[1]  # two polyps in view at once
    assert alternations > 10 and overlaps > 0


def test_colour_alone_does_not_identify_a_polyp() -> None:
    polyps = [p for proc in plan(SynthConfig(n_procedures=12, seed=5)) for p in proc]
    colors = np.array([p.look.color for p in polyps])
    nearest = [
        np.sort(np.abs(colors - c).max(axis=1))[1] for c in colors
    ]  # distance to the closest other polyp's base colour
    assert np.median(nearest) < 12


def test_lookalikes_copy_another_procedures_polyp() -> None:
    config = SynthConfig(n_procedures=6, seed=0, lookalike_fraction=1.0)
    procs = plan(config)
    originals = {
        spec.identity_id: spec
        for proc in plan(dataclasses.replace(config, lookalike_fraction=0.0))
        for spec in proc
    }
    for proc in procs:
        for spec in proc:
            assert spec.lookalike_of is not None
            source = originals[spec.lookalike_of]
            assert source.identity_id.split("_")[0] != spec.identity_id.split("_")[0]
            assert spec.look.pattern == source.look.pattern
            assert spec.histology == source.histology
            assert np.abs(np.subtract(spec.look.color, source.look.color)).max() < 20
            assert spec.look != source.look
    assert all(s.lookalike_of is None for s in originals.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_procedures": 0}, "n_procedures"),
        ({"image_width": 10}, "image size"),
        ({"tracklet_length": (50, 10)}, "tracklet_length"),
        ({"polyps_per_procedure": (0, 3)}, "polyps_per_procedure"),
        ({"frames_per_procedure": 10}, "frames_per_procedure"),
        ({"lookalike_fraction": 1.5}, "lookalike_fraction"),
        ({"interleave": -0.1}, "interleave"),
        ({"split_fractions": (0.5, -0.1, 0.6)}, "split_fractions"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"palette": "neon"}, "palette"),
        ({"camera_speed": 0.0}, "camera_speed"),
    ],
)
def test_invalid_config_is_explained(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


# --- generator variations (the "shifted" generalisation set) ---------------------------


def test_default_report_leaves_out_the_later_variation_fields(tiny: Dataset) -> None:
    """Keeps a default dataset byte-identical (TINY_SHA256) after palette/camera_speed."""
    _, report = tiny
    assert "palette" not in report["config"] and "camera_speed" not in report["config"]
    assert synth_preset("default") == SynthConfig()
    shifted = dataclasses.replace(TINY, palette="shifted", camera_speed=2.0)
    assert shifted.report_dict()["palette"] == "shifted"
    assert shifted.report_dict()["camera_speed"] == 2.0


def test_shifted_preset() -> None:
    config = synth_preset("shifted", n_procedures=4)
    expected = SYNTH_PRESETS["shifted"]
    assert config.n_procedures == 4 and config.seed == expected["seed"] != SynthConfig().seed
    assert (config.palette, config.camera_speed) == ("shifted", 2.0)
    assert config.interleave > SynthConfig().interleave
    assert config.polyps_per_procedure[0] > SynthConfig().polyps_per_procedure[0]
    assert len(split_procedures(synth_preset("shifted"))["test"]) >= 6
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        synth_preset("nope")


def test_palette_sets_the_polyp_colours() -> None:
    """Each base colour lies near its palette entry (histology tint ≤ 10, shift sd 2)."""
    for name in ("default", "shifted"):
        config = SynthConfig(n_procedures=6, seed=3, palette=name, lookalike_fraction=0.0)
        colours = np.array([p.look.color for proc in plan(config) for p in proc])
        palette = PALETTES[name]
        nearest = np.abs(colours[:, None, :] - palette[None]).max(axis=2).min(axis=1)
        assert nearest.max() < 20, name
    assert not set(map(tuple, PALETTES["shifted"])) & set(map(tuple, PALETTES["default"]))


def test_camera_speed_scales_the_pan_and_keeps_speed_1_exact() -> None:
    default = _camera_path(seeded_rng(0, 1), 1200, 320)
    assert np.array_equal(_camera_path(seeded_rng(0, 1), 1200, 320, 1.0), default)
    fast = _camera_path(seeded_rng(0, 1), 1200, 320, 2.0)
    ratio = np.abs(np.diff(fast)).mean() / np.abs(np.diff(default)).mean()
    assert 1.6 < ratio < 2.4


def test_variations_change_the_bytes_deterministically(tiny: Dataset, tmp_path: Path) -> None:
    root, _ = tiny
    shifted = dataclasses.replace(TINY, palette="shifted", camera_speed=2.0)
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, shifted, progress=False)
    generate(b, shifted, progress=False)
    assert _tree_sha256(a) == _tree_sha256(b)
    assert _digest(a) != _digest(root)
    # the planned timeline (which polyp is visited when) depends on neither
    assert [[s.runs for s in proc] for proc in plan(shifted)] == [
        [s.runs for s in proc] for proc in plan(TINY)
    ]


def test_cli_preset_with_overrides(tmp_path: Path) -> None:
    """``polypindex synth --preset shifted``: the preset's settings; options override them."""
    from typer.testing import CliRunner

    from polypindex.cli import app

    args = ["synth", "--out", str(tmp_path), "--preset", "shifted", "--procedures", "3"]
    args += ["--frames", "160", "--width", "96", "--height", "80", "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "synth_report.json").read_text())["config"]
    assert (config["palette"], config["camera_speed"], config["seed"]) == ("shifted", 2.0, 101)
    assert config["n_procedures"] == 3 and config["interleave"] == 0.5
