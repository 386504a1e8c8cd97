"""Fixtures of the probe tests: a tiny synthetic dataset (with some labels made
unknown) and a tiny hand-built ONNX encoder carrying our metadata (no torch).

The encoder computes ``embedding = mean_s(mean_hw(frames) @ W) + bias`` (the
graph of ``tests/model/test_runtime.py``), so it sees the crop's mean colour,
which the synthetic generator ties weakly to histology.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder
from helpers.synth import small_synth

from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.synth import generate

IM = 16
DIM = 8
PREPROCESS = PreprocessConfig(im_size=IM, bbox_scale_factor=2.0)
# several fragments per tracklet (30-40 frames → 8-10 after stride 4 → 2-3 fragments)
FRAGMENT = FragmentConfig(stride=4, fragment_length=3, drop_last=True)
TINY_SYNTH = small_synth(
    procedures=8,
    frames=200,
    size=(96, 80),
    tracklet_length=(30, 40),
    polyps_per_procedure=(2, 4),
    tracklets_per_polyp=(1, 2),
)


def write_tiny_encoder(path: Path, version: str = "hmve-tiny-probe-000000") -> Path:
    """A tiny ONNX 'encoder' ``[b, s, 3, IM, IM] → [b, DIM]`` with polypindex metadata."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, DIM)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=DIM).astype(np.float32)
    metadata = onnx_metadata(version, PREPROCESS, FRAGMENT, DIM, "0.6")
    return write_mean_colour_encoder(
        path, weight, bias, metadata, im_size=IM, graph_name="tiny_probe_encoder"
    )


def _make_unknown(root: Path, split: str) -> dict[str, str]:
    """Blank one polyp's histology ('unknown') and another's size (removed) in ``split``."""
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    polyps = sorted({a["identity_id"] for a in data["annotations"]})
    no_histology, no_size = polyps[0], polyps[1]
    for ann in data["annotations"]:
        if ann["identity_id"] == no_histology:
            ann["histology"] = "unknown"
        if ann["identity_id"] == no_size:
            ann.pop("size", None)
    path.write_text(json.dumps(data))
    return {"histology": no_histology, "size": no_size}


@pytest.fixture(scope="session")
def tiny_probe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A tiny synthetic dataset; in its train split one polyp has an unknown
    histology and another no size. Returns ``(root, {task: polyp made unknown})``."""
    root = tmp_path_factory.mktemp("probe_synth")
    generate(root, TINY_SYNTH, progress=False)
    return root, _make_unknown(root, "train")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("probe_encoder") / "encoder.onnx")
