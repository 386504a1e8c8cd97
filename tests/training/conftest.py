"""Shared fixtures of the training tests: a tiny hand-made dataset of coloured discs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.coco import write_coco_json


def write_disc_split(root: Path, split: str, n_videos: int, frames: int, seed: int) -> None:
    """Per video three polyps (discs of one colour each) in turn, 16 frames each, then 4 empty."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for v in range(n_videos):
        seq = f"{split}-{v:02d}"
        colours = rng.integers(40, 255, (3, 3))
        for f in range(frames):
            image = np.full((64, 80, 3), 30, np.uint8)
            polyp = (f // 20) % 3
            name = f"{seq}_{f:04d}.jpg"
            images.append(
                {"id": len(images) + 1, "file_name": name, "width": 80, "height": 64}
                | {"frame_id": f, "sequence_id": seq, "dataset_id": "discs"}
            )
            if f % 20 < 16:
                x = 20 + f % 20
                cv2.circle(image, (x + 8, 28), 8, tuple(int(c) for c in colours[polyp]), -1)
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": len(images), "bbox": [x, 20, 16, 16]}
                    | {"category_id": 1, "identity_id": f"{seq}-p{polyp}"}
                )
            cv2.imwrite(str(root / "images" / name), image[:, :, ::-1])
    write_coco_json(root, split, images, annotations)


@pytest.fixture(scope="session")
def disc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: 2 videos × 120 frames; val: 1 video × 120 frames (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("discs")
    write_disc_split(root, "train", n_videos=2, frames=120, seed=0)
    write_disc_split(root, "val", n_videos=1, frames=120, seed=1)
    return root


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Any]:
    """``tiny_config(data, overrides)``: the ``test_tiny`` preset on ``data``, writing to
    ``tmp_path/run`` with crops cached in ``tmp_path/crops``."""
    from polypindex.training.train_config import load_train_config

    def make(data: Path, overrides: Mapping[str, Any] | None = None) -> Any:
        base = {"data_root": str(data), "out_dir": str(tmp_path / "run")}
        return load_train_config(
            "test_tiny", base | {"cache_dir": str(tmp_path / "crops")} | dict(overrides or {})
        )

    return make
