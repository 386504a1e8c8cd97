"""The synthetic colonoscopy generator: format, determinism, trackleting, labels."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from model.coco import load_coco_split
from model.config import TrackletConfig
from polypindex.synth import SynthConfig, generate, plan, split_procedures

TINY = SynthConfig(
    n_procedures=3, frames_per_procedure=160, image_width=96, image_height=80, seed=0, workers=1
)
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, TINY, progress=False)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update((root / "annotations" / f"instances_{split}.json").read_bytes())
    for p in sorted((root / "images").glob("*.jpg"))[::25]:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny
    again = tmp_path / "again"
    generate(again, TINY, progress=False)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    generate(other, SynthConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    assert _digest(other) != _digest(root)


def test_parallel_workers_give_the_same_dataset(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny
    par = tmp_path / "par"
    generate(par, SynthConfig(**{**TINY.__dict__, "workers": 2}), progress=False)
    assert _digest(par) == _digest(root)


def test_format_loads_in_pycocotools_and_validates(tiny: tuple[Path, dict]) -> None:
    root, report = tiny
    for split in SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        coco = COCO(str(path))
        assert len(coco.imgs) == report["splits"][split]["frames"]
        data = json.loads(path.read_text())
        for img in data["images"]:
            assert {
                "id",
                "file_name",
                "width",
                "height",
                "frame_id",
                "sequence_id",
                "dataset_id",
            } <= set(img)
        for ann in data["annotations"]:
            assert {
                "id",
                "image_id",
                "bbox",
                "category_id",
                "identity_id",
                "size",
                "histology",
            } <= set(ann)
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
        load_coco_split(root, split)  # our validator agrees (it also checks the files exist)


def test_each_generated_run_is_one_tracklet_under_the_spec_rule(tiny: tuple[Path, dict]) -> None:
    root, report = tiny
    for split in SPLITS:
        tracklets = load_coco_split(root, split).tracklets(TrackletConfig(min_tracklet_length=1))
        assert len(tracklets) == report["splits"][split]["tracklets"]
        lo, hi = TINY.tracklet_length
        assert all(lo <= len(t) <= hi for t in tracklets)


def test_splits_are_disjoint_by_procedure(tiny: tuple[Path, dict]) -> None:
    root, report = tiny
    seqs = [set(report["splits"][s]["sequence_ids"]) for s in SPLITS]
    assert all(seqs) and not (seqs[0] & seqs[1] or seqs[0] & seqs[2] or seqs[1] & seqs[2])
    ids = [
        set(a["identity_id"] for a in load_coco_split(root, s).coco.anns.values()) for s in SPLITS
    ]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_labels_cover_both_classes_and_tracklets_interleave() -> None:
    procs = plan(SynthConfig(n_procedures=12, seed=3))
    polyps = [p for proc in procs for p in proc]
    assert {p.size_mm <= 5 for p in polyps} == {True, False}
    assert {p.histology == "adenoma" for p in polyps} == {True, False}
    # within at least one procedure, runs of different polyps overlap or alternate in time
    interleaved = 0
    for proc in procs:
        runs = sorted((s, p.identity_id) for p in proc for s, _ in p.runs)
        interleaved += sum(a[1] != b[1] for a, b in itertools.pairwise(runs))
    assert interleaved > 10


def test_lookalikes_share_appearance_across_procedures() -> None:
    procs = plan(SynthConfig(n_procedures=10, seed=0, lookalike_fraction=1.0))
    looks = [(i, p.look.pattern, p.look.color) for i, proc in enumerate(procs) for p in proc]
    close = 0
    for i, pat, col in looks:
        for j, pat2, col2 in looks:
            if i != j and pat == pat2 and np.abs(np.subtract(col, col2)).max() < 20:
                close += 1
    assert close > 0
    assert split_procedures(SynthConfig(n_procedures=10))["test"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_procedures": 0}, "n_procedures"),
        ({"image_width": 10}, "image size"),
        ({"tracklet_length": (50, 10)}, "tracklet_length"),
        ({"frames_per_procedure": 10}, "frames_per_procedure"),
        ({"lookalike_fraction": 1.5}, "lookalike_fraction"),
        ({"split_fractions": (0.5, -0.1, 0.6)}, "split_fractions"),
        ({"workers": 0}, "workers"),
    ],
)
def test_invalid_config_is_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)
