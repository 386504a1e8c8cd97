"""Shared fixtures of the training tests: a tiny hand-made dataset of coloured discs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


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
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "polyp"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


@pytest.fixture(scope="session")
def disc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: 2 videos × 120 frames; val: 1 video × 120 frames (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("discs")
    write_disc_split(root, "train", n_videos=2, frames=120, seed=0)
    write_disc_split(root, "val", n_videos=1, frames=120, seed=1)
    return root
