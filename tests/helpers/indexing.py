"""Test doubles and synthetic inputs for the indexer: a deterministic fake encoder (the
:class:`~indexer.pipeline.Embedder` protocol, numpy only), tiny videos, frame folders,
detection CSVs, a tiny COCO dataset and a hand-made probe. Used by the tests and the
crash-test worker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from helpers.coco import write_coco_json
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.scoring.probe import CLASSES, Probe

TRACKLETS = TrackletConfig(min_tracklet_length=3)
W, H = 64, 48


class FakeEncoder:
    """Mean-pooled crops projected by a fixed random matrix, L2-normalised (deterministic)."""

    dim = 16
    preprocess = PreprocessConfig(im_size=32, bbox_scale_factor=2.0)
    fragment = FragmentConfig(stride=1, fragment_length=-1, max_frames=4)
    reid_threshold = 0.5

    def __init__(self, version: str = "fake-v1") -> None:
        self.version = version
        self.projection = (
            np.random.default_rng(0).normal(size=(3 * 4 * 4, self.dim)).astype(np.float32)
        )
        self.calls = 0

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        self.calls += 1
        size = self.preprocess.im_size
        for seq in seqs:  # what the pipeline must hand an encoder: normalised float32 crops
            if seq.dtype != np.float32 or seq.shape[1:] != (3, size, size):
                raise AssertionError(
                    f"expected float32 (S, 3, {size}, {size}), got {seq.dtype} {seq.shape}"
                )
        feats = [seq.mean(axis=0).reshape(3, 4, 8, 4, 8).mean(axis=(2, 4)).ravel() for seq in seqs]
        out = np.stack(feats) @ self.projection + 1e-3
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def frame_pixels(frame: int, n_objects: int = 2) -> np.ndarray:
    """A frame with ``n_objects`` coloured squares moving right by 1 px per frame."""
    img = np.full((H, W, 3), 30, dtype=np.uint8)
    for k in range(n_objects):
        x, y = 4 + frame + 30 * k, 8 + 10 * k
        img[y : y + 10, x : x + 10] = (200, 40 + 100 * k, 60)
    return img


def object_boxes(frame: int, n_objects: int = 2) -> list[tuple[float, float, float, float]]:
    return [(4.0 + frame + 30 * k, 8.0 + 10 * k, 10.0, 10.0) for k in range(n_objects)]


def write_video(path: Path, n_frames: int, n_objects: int = 2) -> Path:
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(frame_pixels(i, n_objects), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def write_frames(folder: Path, n_frames: int, n_objects: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_frames):
        assert cv2.imwrite(str(folder / f"{i:06d}.jpg"), frame_pixels(i, n_objects)[:, :, ::-1])
    return folder


def write_csv(path: Path, n_frames: int, n_objects: int = 2, track_ids: bool = False) -> Path:
    lines = ["frame,x,y,w,h,score" + (",track_id" if track_ids else "")]
    for i in range(n_frames):
        for k, (x, y, w, h) in enumerate(object_boxes(i, n_objects)):
            lines.append(f"{i},{x},{y},{w},{h},0.9" + (f",t{k}" if track_ids else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


COCO_FRAMES = 6
# sequence -> identity -> (box at frame 0, colour); boxes move 1 px right per frame
COCO_LAYOUT: dict[str, dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int]]]] = {
    "001": {"p1": ((4, 8, 12, 12), (255, 40, 40)), "p2": ((40, 20, 14, 12), (40, 255, 40))},
    "002": {"p3": ((20, 16, 16, 14), (40, 40, 255))},
}


def write_coco(root: Path, corrupt: bool = False, p1_labels: bool = False) -> Path:
    """A tiny COCO dataset (split ``test``, dataset ``ds``) laid out by :data:`COCO_LAYOUT`.

    Args:
        root: the dataset folder to create.
        corrupt: make frame 3 of sequence ``002`` an undecodable JPEG.
        p1_labels: give polyp ``p1`` size/histology metadata.
    """
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for seq, identities in COCO_LAYOUT.items():
        for frame in range(COCO_FRAMES):
            image_id = len(images) + 1
            name = f"{seq}_{frame:04d}.jpg"
            pixels = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
            for ident, ((x, y, w, h), colour) in identities.items():
                pixels[y : y + h, x + frame : x + frame + w] = colour
                labels = (
                    {"size": 4.0, "histology": "adenoma"} if p1_labels and ident == "p1" else {}
                )
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "bbox": [x + frame, y, w, h],
                        "category_id": 1,
                        "identity_id": ident,
                        **labels,
                    }
                )
            if not cv2.imwrite(str(root / "images" / name), pixels):
                raise OSError(f"cannot write {root / 'images' / name}")
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": W,
                    "height": H,
                    "frame_id": frame,
                    "sequence_id": seq,
                    "dataset_id": "ds",
                }
            )
    if corrupt:
        (root / "images" / "002_0003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_coco_json(root, "test", images, annotations)
    return root


def linear_probe(
    task: str,
    encoder_version: str,
    weight: np.ndarray,
    bias: float = 0.0,
    temperature: float = 1.0,
) -> Probe:
    """A hand-made linear probe: ``P(positive) = sigmoid((weight · x + bias) / temperature)``."""
    w = np.asarray(weight, dtype=np.float32).reshape(1, -1)
    return Probe(
        {"linear.weight": w, "linear.bias": np.array([bias], dtype=np.float32)},
        {
            "task": task,
            "classes": list(CLASSES[task]),
            "head": "linear",
            "temperature": temperature,
            "encoder_version": encoder_version,
            "dim": w.shape[1],
        },
    )
