"""Tracklets and fragments (docs/method.md#tracklets): cutting box sequences into runs, linking raw
detections into tracks (ByteTrack from the ``trackers`` package by default, or the greedy IoU
tracker), and subsampling runs into fragments.

Boxes are ``[x, y, w, h]`` in pixels throughout.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.data.config import FragmentConfig, TrackletConfig

Linker = Literal["bytetrack", "greedy"]
LINKERS: tuple[str, ...] = ("bytetrack", "greedy")
DEFAULT_LINKER: Linker = "bytetrack"

# The gap rule's ``separation_thresh`` for boxes that come from a detector (a detection
# file, with or without track ids), where the annotated default (1) cuts a track at
# every frame the detector missed: measured in docs/results.md#linking-detections-
# bytetrack-vs-greedy (best or within 0.025 HOTA of the best of 1-30 for every
# simulated detector), docs/inputs.md#linkers.
DETECTION_SEPARATION_THRESH = 10

_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ByteTrackSettings:
    """ByteTrack's own settings (``trackers.ByteTrackTracker``; docs/method.md#raw-detections).

    The IoU gate is the tracklet rule's ``iou_thresh``; every other value is the
    library's default except ``minimum_consecutive_frames`` (1: a track's first box
    belongs to it, as with the greedy tracker).
    """

    lost_track_buffer: int = 30
    frame_rate: float = 30.0
    track_activation_threshold: float = 0.7
    high_conf_det_threshold: float = 0.6
    minimum_consecutive_frames: int = 1


def _bytetrack_classes() -> tuple[Any, Any]:
    """``(trackers.ByteTrackTracker, supervision.Detections)``, or a clear error."""
    try:
        from supervision import Detections
        from trackers import ByteTrackTracker
    except ImportError as exc:
        raise ConfigError(
            "the default linker (ByteTrack) needs the `trackers` and `supervision` packages: "
            "pip install 'polypindex[tracking]', then pip install --no-deps "
            "trackers==2.6.1 supervision==0.26.1 (docs/inputs.md#linkers); "
            "or choose linker='greedy'"
        ) from exc
    return ByteTrackTracker, Detections


def _spawn_box(track: Any, candidates: list[int], xyxy: np.ndarray) -> int | None:
    """The box of ``candidates`` (this frame's untracked boxes) a new track started from.

    A track's state right after it is spawned is the box it was spawned from; ``None``
    when no candidate is that box (a state estimator that does not start at the box).
    """
    state = np.asarray(track.get_state_bbox(), dtype=np.float64).reshape(-1)[:4]
    return next((i for i in candidates if np.allclose(xyxy[i], state, atol=1e-3)), None)


def _check_confidences(scores: np.ndarray | None, settings: ByteTrackSettings) -> None:
    """ByteTrack reads scores as confidences in [0, 1]; refuse any other range, and warn
    when no box can start a track (docs/inputs.md#linkers)."""
    if scores is None or not len(scores):
        return
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if not 0.0 <= lo <= hi <= 1.0:  # NaN fails too
        raise InvalidInputError(
            f"ByteTrack reads detection scores as confidences in [0, 1]; these range from "
            f"{lo:g} to {hi:g}: rescale them, leave the score column out, or choose the "
            "greedy linker (linker='greedy')"
        )
    if hi < settings.track_activation_threshold:
        _log.warning(
            "no detection scores %g or more (ByteTrack's track activation threshold; the "
            "best scores %g): ByteTrack starts no track and these %d boxes give no tracklet; "
            "the greedy linker ignores scores",
            settings.track_activation_threshold,
            hi,
            len(scores),
        )


def bytetrack_tracks(
    frame_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
    config: TrackletConfig,
    settings: ByteTrackSettings | None = None,
) -> dict[int, np.ndarray]:
    """Track ids from ByteTrack (the ``trackers`` package), before any cutting.

    Frames are visited from the first to the last detection's, an empty update for
    every frame without boxes (so lost tracks age as they should).

    Args:
        frame_ids: (n,) frame position of each detection (any order).
        boxes: (n, 4) xywh boxes.
        scores: (n,) detection scores (``None``: all fully confident, one-stage matching).
        config: its ``iou_thresh`` is ByteTrack's IoU gate.
        settings: ByteTrack's other settings.

    Returns:
        Track id → index array into the inputs, sorted by frame. Detections ByteTrack
        leaves untracked (low scores that match no track) are in none.
    """
    tracker_class, detections_class = _bytetrack_classes()
    frame_arr = np.asarray(frame_ids, dtype=np.int64)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(frame_arr) != len(box_arr):
        raise InvalidInputError(f"{len(frame_arr)} frame ids but {len(box_arr)} boxes")
    score_arr = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if score_arr is not None and len(score_arr) != len(frame_arr):
        raise InvalidInputError(f"{len(score_arr)} scores but {len(frame_arr)} boxes")
    s = settings or ByteTrackSettings()
    _check_confidences(score_arr, s)
    tracker = tracker_class(
        lost_track_buffer=s.lost_track_buffer,
        frame_rate=s.frame_rate,
        track_activation_threshold=s.track_activation_threshold,
        minimum_consecutive_frames=s.minimum_consecutive_frames,
        minimum_iou_threshold=config.iou_thresh,
        high_conf_det_threshold=s.high_conf_det_threshold,
    )
    members: dict[int, list[int]] = {}
    # (track, the box it was spawned from): ``trackers`` answers that box with id -1 (an
    # id is allotted on a track's first match, even with minimum_consecutive_frames=1),
    # where the greedy tracker keeps it; it joins the track if the track gets an id.
    born: list[tuple[Any, int]] = []
    if len(frame_arr) == 0:
        return {}
    order = np.argsort(frame_arr, kind="stable")
    sorted_frames = frame_arr[order]
    xyxy = np.concatenate([box_arr[:, :2], box_arr[:, :2] + box_arr[:, 2:]], axis=1)
    for frame in range(int(sorted_frames[0]), int(sorted_frames[-1]) + 1):
        lo, hi = np.searchsorted(sorted_frames, [frame, frame + 1])
        idx = order[lo:hi]
        dets = detections_class(
            xyxy=xyxy[idx].astype(np.float32).reshape(-1, 4),
            confidence=None if score_arr is None else score_arr[idx].astype(np.float32),
            data={"index": idx.astype(np.int64)},
        )
        before = list(tracker.tracks)  # held, so no new track can reuse an old one's id()
        known = {id(t) for t in before}
        out = tracker.update(dets)
        untracked: list[int] = []
        if out.tracker_id is not None and len(out):
            for i, tid in zip(out.data["index"].tolist(), out.tracker_id.tolist(), strict=True):
                if tid >= 0:
                    members.setdefault(int(tid), []).append(int(i))
                else:
                    untracked.append(int(i))
        for track in tracker.tracks:
            if id(track) not in known and (first := _spawn_box(track, untracked, xyxy)) is not None:
                untracked.remove(first)
                born.append((track, first))
    for track, first in born:
        if int(track.tracker_id) >= 0:
            members.setdefault(int(track.tracker_id), []).append(first)
    return {
        tid: np.asarray(sorted(m, key=lambda i: (int(frame_arr[i]), i)), dtype=np.int64)
        for tid, m in members.items()
    }


def cut_tracks(
    tracks: Iterable[np.ndarray],
    frame_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    config: TrackletConfig,
) -> list[np.ndarray]:
    """Tracks (index arrays sorted by frame) cut into tracklets by the gap/IoU rule.

    Returns:
        Index arrays into the inputs, one per kept run (at least
        ``min_tracklet_length`` frames), each sorted by frame, ordered by first frame.
    """
    frame_arr = np.asarray(frame_ids, dtype=np.int64)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    runs: list[np.ndarray] = []
    for members in tracks:
        runs.extend(members[r] for r in split_runs(frame_arr[members], box_arr[members], config))
    runs.sort(key=lambda t: (int(frame_arr[t[0]]), int(t[0])))
    return runs


def link_detections_bytetrack(
    frame_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
    config: TrackletConfig,
    settings: ByteTrackSettings | None = None,
) -> list[np.ndarray]:
    """ByteTrack's tracks cut into tracklets by the gap/IoU rule (docs/method.md#raw-detections).

    Returns:
        Index arrays into the inputs, one per kept run (at least
        ``min_tracklet_length`` frames), each sorted by frame, ordered by first frame.
    """
    tracks = bytetrack_tracks(frame_ids, boxes, scores, config, settings)
    return cut_tracks(tracks.values(), frame_ids, boxes, config)


def link(
    frame_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
    config: TrackletConfig,
    linker: str = DEFAULT_LINKER,
) -> list[np.ndarray]:
    """Tracklets of boxes without track ids, by the chosen linker.

    Args:
        linker: ``"bytetrack"`` (default; the ``trackers`` package) or ``"greedy"``
            (:func:`link_detections`, no dependency).

    Raises:
        ConfigError: an unknown linker, or ByteTrack without the ``trackers`` package.
    """
    if linker == "greedy":
        return link_detections(frame_ids, boxes, config)
    if linker == "bytetrack":
        return link_detections_bytetrack(frame_ids, boxes, scores, config)
    raise ConfigError(f"unknown linker {linker!r}; known: {', '.join(LINKERS)}")


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
