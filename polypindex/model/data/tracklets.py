"""Tracklets and fragments (docs/method.md#tracklets): cutting box sequences into runs, linking raw
detections with a greedy IoU tracker, and subsampling runs into fragments.

Boxes are ``[x, y, w, h]`` in pixels throughout.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import FragmentConfig, TrackletConfig


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    ax1, ay1 = a[0] + a[2], a[1] + a[3]
    bx1, by1 = b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``a`` (N, 4) and ``b`` (M, 4) xywh boxes → (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True, eq=False)
class Tracklet:
    """One run of frames showing one polyp.

    Attributes:
        sequence_id: the procedure (video) it comes from.
        identity_id: the polyp entity, or ``None`` when unknown (raw detections).
        index: position of this tracklet among its identity's (or track's) runs.
        frame_ids: (n,) int64 frame positions in the video, increasing.
        boxes: (n, 4) float32 ``[x, y, w, h]`` boxes, one per frame.
        image_paths: n paths of the frame images (may be empty for in-memory frames).
        metadata: optional labels (``size`` in mm, ``histology``, ...).
    """

    sequence_id: str
    identity_id: str | None
    index: int
    frame_ids: np.ndarray
    boxes: np.ndarray
    image_paths: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.frame_ids) != len(self.boxes):
            raise InvalidInputError(
                f"tracklet {self.key}: {len(self.frame_ids)} frame ids but {len(self.boxes)} boxes"
            )
        if self.image_paths and len(self.image_paths) != len(self.frame_ids):
            raise InvalidInputError(
                f"tracklet {self.key}: {len(self.image_paths)} image paths "
                f"but {len(self.frame_ids)} frames"
            )

    @property
    def key(self) -> str:
        """A stable, human-readable key: ``sequence/identity/index``."""
        return f"{self.sequence_id}/{self.identity_id or 'track'}/{self.index}"

    @property
    def start_frame(self) -> int:
        return int(self.frame_ids[0])

    @property
    def end_frame(self) -> int:
        return int(self.frame_ids[-1])

    def __len__(self) -> int:
        return len(self.frame_ids)


def split_runs(
    frame_ids: np.ndarray, boxes: np.ndarray, config: TrackletConfig
) -> list[np.ndarray]:
    """Cut one identity's instances into runs (docs/method.md#tracklets).

    Args:
        frame_ids: (n,) frame positions, sorted increasing.
        boxes: (n, 4) xywh boxes aligned with ``frame_ids``.
        config: gap / IoU / minimum length rule.

    Returns:
        Index arrays into the inputs, one per kept run, in time order.
    """
    n = len(frame_ids)
    if n == 0:
        return []
    starts = [0]
    for i in range(1, n):
        gap = int(frame_ids[i]) - int(frame_ids[i - 1])
        if gap > config.separation_thresh or box_iou(boxes[i - 1], boxes[i]) < config.iou_thresh:
            starts.append(i)
    starts.append(n)
    runs = [np.arange(s, e) for s, e in itertools.pairwise(starts)]
    return [r for r in runs if len(r) >= config.min_tracklet_length]


def link_detections(
    frame_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    config: TrackletConfig,
) -> list[np.ndarray]:
    """Greedy IoU tracker for boxes without identities (docs/method.md#tracklets).

    Each detection joins the live track whose last box (at most
    ``separation_thresh`` frames earlier) overlaps it most, if that IoU is at
    least ``iou_thresh``; pairs are matched greedily by decreasing IoU, each
    track taking at most one detection per frame. Unmatched detections start
    new tracks. Tracks shorter than ``min_tracklet_length`` are dropped.

    Args:
        frame_ids: (n,) frame position of each detection (any order).
        boxes: (n, 4) xywh boxes.
        config: the same gap / IoU / length rule as for annotated tracklets.

    Returns:
        Index arrays into the inputs, one per track, each sorted by frame.
    """
    frame_arr = np.asarray(frame_ids, dtype=np.int64)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(frame_arr) != len(box_arr):
        raise InvalidInputError(f"{len(frame_arr)} frame ids but {len(box_arr)} boxes")
    order = np.argsort(frame_arr, kind="stable")
    tracks: list[list[int]] = []
    live: list[int] = []  # indices into tracks
    for frame in np.unique(frame_arr):
        dets = [int(i) for i in order[frame_arr[order] == frame]]
        live = [t for t in live if frame - frame_arr[tracks[t][-1]] <= config.separation_thresh]
        matched_dets: set[int] = set()
        if live and dets:
            last = np.stack([box_arr[tracks[t][-1]] for t in live])
            iou = box_iou_matrix(last, box_arr[dets])
            pairs = sorted(
                ((iou[i, j], i, j) for i in range(len(live)) for j in range(len(dets))),
                reverse=True,
            )
            used_tracks: set[int] = set()
            for value, i, j in pairs:
                if value < config.iou_thresh or value <= 0:
                    break
                if i in used_tracks or j in matched_dets:
                    continue
                tracks[live[i]].append(dets[j])
                used_tracks.add(i)
                matched_dets.add(j)
        for j, det in enumerate(dets):
            if j not in matched_dets:
                tracks.append([det])
                live.append(len(tracks) - 1)
    kept = [np.asarray(t, dtype=np.int64) for t in tracks if len(t) >= config.min_tracklet_length]
    kept.sort(key=lambda t: (int(frame_arr[t[0]]), int(t[0])))
    return kept


def fragment_indices(n_frames: int, config: FragmentConfig) -> list[np.ndarray]:
    """Subsample a tracklet of ``n_frames`` and cut it into fragments.

    Args:
        n_frames: frames in the tracklet.
        config: stride, fragment length (``-1`` = whole), drop_last, max_frames.

    Returns:
        One index array per fragment, indices into the tracklet's frames. With
        ``drop_last=False`` the last piece is padded by repeating its last frame.
    """
    if n_frames <= 0:
        return []
    sub = np.arange(0, n_frames, config.stride, dtype=np.int64)
    if config.fragment_length == -1:
        if config.max_frames and len(sub) > config.max_frames:
            pick = np.linspace(0, len(sub) - 1, config.max_frames).round().astype(np.int64)
            sub = sub[pick]
        return [sub]
    length = config.fragment_length
    out = []
    for start in range(0, len(sub), length):
        piece = sub[start : start + length]
        if len(piece) < length:
            if config.drop_last:
                break
            piece = np.concatenate([piece, np.full(length - len(piece), piece[-1], dtype=np.int64)])
        out.append(piece)
    return out
