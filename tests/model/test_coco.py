"""COCO loading and validation (docs/method.md#data-format): every bad input names the file and
record."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from polypindex.model.core.errors import InvalidAnnotationError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import TrackletConfig


def _dataset(n_frames: int = 6) -> dict[str, Any]:
    images, anns = [], []
    for f in range(n_frames):
        images.append(
            {
                "id": f + 1,
                "file_name": f"s1_{f:03d}.jpg",
                "width": 64,
                "height": 48,
                "frame_id": f,
                "sequence_id": "001-001",
                "dataset_id": "t",
            }
        )
        anns.append(
            {
                "id": 100 + f,
                "image_id": f + 1,
                "bbox": [10 + f, 10, 12, 12],
                "category_id": 1,
                "identity_id": "p1",
                "size": 4.0,
                "histology": "adenoma",
            }
        )
    # a second polyp seen in two runs (gap at frame 3)
    for j, f in enumerate([0, 1, 2, 4, 5]):
        anns.append(
            {
                "id": 200 + j,
                "image_id": f + 1,
                "bbox": [40, 20, 10, 10],
                "category_id": 1,
                "identity_id": "p2",
                "size": 9.0,
                "histology": "hyperplastic",
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "polyp"}]}


def _write(root: Path, data: dict[str, Any], split: str = "test") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for img in data.get("images", []):
        if isinstance(img, dict) and "file_name" in img:
            cv2.imwrite(
                str(root / "images" / img["file_name"]), np.full((48, 64, 3), 128, np.uint8)
            )
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def test_load_and_tracklets(tmp_path: Path) -> None:
    _write(tmp_path, _dataset())
    split = load_coco_split(tmp_path, "test")
    assert split.sequences == ["001-001"]
    tracklets = split.tracklets(TrackletConfig(min_tracklet_length=2))
    assert [(t.identity_id, t.index, t.frame_ids.tolist()) for t in tracklets] == [
        ("p1", 0, [0, 1, 2, 3, 4, 5]),
        ("p2", 0, [0, 1, 2]),
        ("p2", 1, [4, 5]),
    ]
    first = tracklets[0]
    assert first.metadata == {"size": 4.0, "histology": "adenoma"}
    assert first.key == "001-001/p1/0" and (first.start_frame, first.end_frame) == (0, 5)
    assert Path(first.image_paths[0]).name == "s1_000.jpg" and Path(first.image_paths[0]).is_file()
    np.testing.assert_allclose(first.boxes[1], [11, 10, 12, 12])
    # min length drops the short runs
    assert len(split.tracklets(TrackletConfig(min_tracklet_length=4))) == 1


def _mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(_dataset())
    fn(data)
    return data


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (
            lambda d: d["images"][2].pop("frame_id"),
            r"images\[2\] \(id=3\) is missing field\(s\) \['frame_id'\]",
        ),
        (
            lambda d: d["annotations"][1].pop("identity_id"),
            r"annotations\[1\] \(id=101\) is missing field\(s\) \['identity_id'\]",
        ),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
        (
            lambda d: d["annotations"].append(dict(d["annotations"][0])),
            "duplicate annotation id 100",
        ),
        (
            lambda d: d["annotations"][0].update(image_id=999),
            "annotation id=100 refers to missing image_id 999",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[60, 10, 12, 12]),
            r"annotation id=100 has bbox \[60, 10, 12, 12\] outside its image id=1 \(64x48\)",
        ),
        (lambda d: d["annotations"][0].update(bbox=[-5, 10, 12, 12]), "outside its image"),
        (lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 12]), "non-positive size"),
        (lambda d: d["annotations"][0].update(bbox=[10, 10, 12]), "malformed bbox"),
        (lambda d: d["images"][0].update(width=0), "invalid width/height"),
        (lambda d: d["images"][0].update(frame_id="7"), "non-integer frame_id"),
        (lambda d: d.pop("annotations"), "missing or non-list 'annotations'"),
    ],
)
def test_invalid_records_are_named(
    tmp_path: Path, mutation: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = _write(tmp_path, _mutate(mutation))
    with pytest.raises(InvalidAnnotationError, match=message) as info:
        load_coco_split(tmp_path, "test")
    assert str(path) in str(info.value)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    _write(tmp_path, _dataset())
    (tmp_path / "images" / "s1_002.jpg").unlink()
    with pytest.raises(
        InvalidAnnotationError, match=r"image id=3: file .*s1_002.jpg does not exist"
    ):
        load_coco_split(tmp_path, "test")


def test_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidAnnotationError, match="annotation file not found"):
        load_coco_split(tmp_path, "val")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(InvalidAnnotationError, match="not valid JSON"):
        load_coco_split(tmp_path, "val")
