"""Test doubles and synthetic inputs for the indexer: a deterministic fake encoder (the
:class:`~indexer.pipeline.Embedder` protocol, numpy only), tiny videos, frame folders and
detection CSVs. Used by the tests, the crash-test worker and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from model.config import FragmentConfig, PreprocessConfig, TrackletConfig

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
