"""Detections CSVs: reading them, checking their boxes, and cutting them into tracklets.

A detections CSV (MOT style) has one box per line::

    frame,x,y,w,h,score[,track_id]

with that header (columns in any order, extra columns ignored), or without a
header in exactly that column order. Boxes are ``[x, y, w, h]`` pixels.
Boxes with a track id are grouped by track and cut with the gap/IoU rule;
boxes without one are linked by the greedy IoU tracker
(:func:`model.data.tracklets.link_detections`). Every problem raises
:class:`~model.core.errors.InvalidInputError` naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import Tracklet, link_detections, split_runs

CSV_COLUMNS = ("frame", "x", "y", "w", "h", "score")
TRACK_COLUMN = "track_id"
# Boxes may touch the border; allow half a pixel of rounding outside it (as model.data.coco).
_BORDER_TOLERANCE = 0.5


@dataclass(frozen=True)
class Detections:
    """Boxes read from a detections CSV.

    Attributes:
        frame_ids: int64 ``(n,)``.
        boxes: float64 ``(n, 4)`` xywh.
        scores: float64 ``(n,)``.
        track_ids: ``(n,)`` strings, or ``None`` when the file has no track ids.
        lines: ``(n,)`` the 1-based line number of each box (for error messages).
    """

    path: Path
    frame_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray | None
    lines: np.ndarray


def read_detections_csv(path: str | Path) -> Detections:
    """Read and validate a detections CSV (see the module docstring for the format).

    Raises:
        InvalidInputError: missing file or columns, a non-numeric value, a
            non-positive box size or a negative frame (naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"detections file not found: {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{p}: cannot read the detections file: {exc}") from exc
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1) if r]
    if not rows:
        raise InvalidInputError(f"{p}: the detections file is empty")
    first = [c.strip().lower() for c in rows[0][1]]
    if any(re.fullmatch(r"[a-z_]+", c) for c in first):  # a header row
        missing = [c for c in CSV_COLUMNS if c not in first]
        if missing:
            raise InvalidInputError(
                f"{p}: header {rows[0][1]} lacks column(s) {missing}; "
                f"expected {', '.join(CSV_COLUMNS)}[, {TRACK_COLUMN}]"
            )
        columns = {c: first.index(c) for c in (*CSV_COLUMNS, TRACK_COLUMN) if c in first}
        body = rows[1:]
    else:
        width = len(rows[0][1])
        if width not in (6, 7):
            raise InvalidInputError(
                f"{p}, line {rows[0][0]}: {width} columns without a header; expected "
                f"{', '.join(CSV_COLUMNS)}[, {TRACK_COLUMN}] (6 or 7 columns) or a header row"
            )
        columns = {c: i for i, c in enumerate((*CSV_COLUMNS, TRACK_COLUMN)[:width])}
        body = rows
    has_tracks = TRACK_COLUMN in columns
    need = max(columns.values()) + 1
    frames, boxes, scores, tracks, lines = [], [], [], [], []
    for line, row in body:
        if len(row) < need:
            raise InvalidInputError(
                f"{p}, line {line}: {len(row)} values, expected at least {need} ({list(columns)})"
            )
        try:
            frame_value = float(row[columns["frame"]])
            box = [float(row[columns[c]]) for c in ("x", "y", "w", "h")]
            score = float(row[columns["score"]])
        except ValueError as exc:
            raise InvalidInputError(f"{p}, line {line}: not a number: {exc}") from exc
        if not frame_value.is_integer() or frame_value < 0:
            raise InvalidInputError(
                f"{p}, line {line}: frame {row[columns['frame']]!r} is not a non-negative integer"
            )
        if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise InvalidInputError(
                f"{p}, line {line}: box {box} must be finite with positive width and height"
            )
        frames.append(int(frame_value))
        boxes.append(box)
        scores.append(score)
        lines.append(line)
        if has_tracks:
            track = row[columns[TRACK_COLUMN]].strip()
            if not track:
                raise InvalidInputError(f"{p}, line {line}: empty {TRACK_COLUMN}")
            tracks.append(track)
    if not frames:
        raise InvalidInputError(f"{p}: no detections after the header")
    return Detections(
        path=p,
        frame_ids=np.asarray(frames, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float64),
        track_ids=np.asarray(tracks, dtype=object) if has_tracks else None,
        lines=np.asarray(lines, dtype=np.int64),
    )


def check_boxes_inside(detections: Detections, width: int, height: int, what: str) -> None:
    """Raise InvalidInputError naming the first box that lies outside a ``width``×``height`` frame."""
    b, t = detections.boxes, _BORDER_TOLERANCE
    outside = (
        (b[:, 0] < -t)
        | (b[:, 1] < -t)
        | (b[:, 0] + b[:, 2] > width + t)
        | (b[:, 1] + b[:, 3] > height + t)
    )
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise InvalidInputError(
            f"{detections.path}, line {int(detections.lines[i])}: box {b[i].tolist()} of frame "
            f"{int(detections.frame_ids[i])} lies outside the {width}x{height} frames of {what} "
            f"({int(outside.sum())} such box(es))"
        )


def detection_tracklets(
    uid: str,
    detections: Detections,
    config: TrackletConfig,
    min_score: float = 0.0,
    image_paths: dict[int, str] | None = None,
) -> list[Tracklet]:
    """Tracklets of one procedure from its detections (by track id, else the IoU tracker).

    Args:
        uid: the procedure UID (the tracklets' ``sequence_id``).
        detections: the boxes.
        config: gap / IoU / minimum length rule.
        min_score: boxes scoring below it are ignored.
        image_paths: frame id → image file (frames folders), else none.

    Returns:
        Tracklets ordered by start frame, keys ``uid/track/<i>``.
    """
    keep = detections.scores >= min_score
    frames, boxes = detections.frame_ids[keep], detections.boxes[keep]
    runs: list[np.ndarray] = []
    if detections.track_ids is None:
        runs = link_detections(frames, boxes, config)
    else:
        tracks = detections.track_ids[keep]
        for track in sorted(set(tracks.tolist())):
            members = np.flatnonzero(tracks == track)
            members = members[np.argsort(frames[members], kind="stable")]
            dup = np.flatnonzero(np.diff(frames[members]) == 0)
            if dup.size:
                line = int(detections.lines[keep][members[dup[0] + 1]])
                raise InvalidInputError(
                    f"{detections.path}, line {line}: track {track!r} has two boxes in frame "
                    f"{int(frames[members[dup[0]]])}"
                )
            runs.extend(members[r] for r in split_runs(frames[members], boxes[members], config))
        runs.sort(key=lambda r: (int(frames[r[0]]), int(r[0])))
    out = []
    for index, run in enumerate(runs):
        fids = frames[run]
        out.append(
            Tracklet(
                sequence_id=uid,
                identity_id=None,
                index=index,
                frame_ids=fids.astype(np.int64),
                boxes=boxes[run].astype(np.float32),
                image_paths=tuple(image_paths[int(f)] for f in fids) if image_paths else (),
            )
        )
    return out
