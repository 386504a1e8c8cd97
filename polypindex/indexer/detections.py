"""Detections CSVs: reading them, checking their boxes, and cutting them into tracklets.

Two formats (docs/inputs.md#detections), never guessed:

- **MOTChallenge**, without a header: ``frame,id,x,y,w,h,conf,x,y,z`` (10 columns,
  detection and ground-truth files) or ``frame,id,x,y,w,h,conf`` (7 columns, tracker
  output). Frames count from 1 and are stored 0-based (``frame - 1``); an ``id`` of
  ``-1`` marks an untracked detection. Frame and id must be integers, every line must
  have the first line's column count, and a file mixes no ``-1`` ids with track ids.
- **The project format**, behind its header line ``frame,x,y,w,h,score[,track_id]``
  (columns in any order, extra columns ignored; frames as given, 0-based for a
  video). A headerless 6-column file is the one variant without a header (no
  MOTChallenge file has 6 columns); a 7-column file with track ids needs the header
  (without it, it is read as MOTChallenge).

Any other headerless column count, or values that do not fit the format, are refused
naming the line. Boxes are ``[x, y, w, h]`` pixels. Boxes with a track id are grouped
by track and cut with the gap/IoU rule; boxes without one are linked by ByteTrack or
the greedy IoU tracker (:func:`model.data.tracklets.link`). Every problem raises
:class:`~model.core.errors.InvalidInputError` naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import DEFAULT_LINKER, Tracklet, link, split_runs

CSV_COLUMNS = ("frame", "x", "y", "w", "h", "score")
TRACK_COLUMN = "track_id"
MOT_COLUMNS = ("frame", "id", "x", "y", "w", "h", "conf", "x", "y", "z")
MOT_WIDTHS = (10, 7)
UNTRACKED_ID = -1
# Boxes may touch the border; allow half a pixel of rounding outside it (as model.data.coco).
_BORDER_TOLERANCE = 0.5
_INTEGER = re.compile(r"[+-]?\d+")

DetectionsFormat = Literal["polypindex", "motchallenge"]

_PROJECT = f"{','.join(CSV_COLUMNS)}[,{TRACK_COLUMN}]"
_MOT10 = ",".join(MOT_COLUMNS)
_MOT7 = ",".join(MOT_COLUMNS[:7])


@dataclass(frozen=True)
class Detections:
    """Boxes read from a detections CSV.

    Attributes:
        frame_ids: int64 ``(n,)``, 0-based for MOTChallenge files (their numbers minus 1).
        boxes: float64 ``(n, 4)`` xywh.
        scores: float64 ``(n,)``.
        track_ids: ``(n,)`` strings, or ``None`` when the file has no track ids.
        lines: ``(n,)`` the 1-based line number of each box (for error messages).
        format: ``"polypindex"`` or ``"motchallenge"``.
        frame_base: what was subtracted from the file's frame numbers (1 for
            MOTChallenge, else 0): file number = ``frame_ids + frame_base``.
    """

    path: Path
    frame_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray | None
    lines: np.ndarray
    format: DetectionsFormat = "polypindex"
    frame_base: int = 0


def read_detections_csv(path: str | Path) -> Detections:
    """Read and validate a detections CSV (see the module docstring for the formats).

    Raises:
        InvalidInputError: missing file or columns, a headerless column count of no
            format, a non-numeric value, a non-positive box size, a negative frame (a
            MOTChallenge frame below 1, an id below -1, mixed tracked and untracked
            boxes), naming the line.
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
    # a header row names a column; a word elsewhere (``high`` for a score) is a bad value
    if any(c in (*CSV_COLUMNS, TRACK_COLUMN, "id", "conf") for c in first):
        return _read_project(p, rows, first)
    width = len(rows[0][1])
    if width in MOT_WIDTHS:
        return _read_mot(p, rows, width)
    if width == len(CSV_COLUMNS):
        return _read_project(p, rows, None)
    raise InvalidInputError(
        f"{p}, line {rows[0][0]}: {width} columns without a header; expected MOTChallenge "
        f"{_MOT10} (10 columns) or {_MOT7} (7), or the header line {_PROJECT} "
        f"(6 columns may go without it)"
    )


def _number(p: Path, line: int, name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"{p}, line {line}: not a number: {name} {value!r}") from None


def _box(p: Path, line: int, values: list[str]) -> list[float]:
    box = [_number(p, line, name, v) for name, v in zip(("x", "y", "w", "h"), values, strict=True)]
    if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
        raise InvalidInputError(
            f"{p}, line {line}: box {box} must be finite with positive width and height"
        )
    return box


def _read_project(
    p: Path, rows: list[tuple[int, list[str]]], header: list[str] | None
) -> Detections:
    if header is not None:
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise InvalidInputError(
                f"{p}: header {rows[0][1]} lacks column(s) {missing}; expected {_PROJECT}"
            )
        columns = {c: header.index(c) for c in (*CSV_COLUMNS, TRACK_COLUMN) if c in header}
        body = rows[1:]
    else:
        columns = {c: i for i, c in enumerate(CSV_COLUMNS)}
        body = rows
    has_tracks = TRACK_COLUMN in columns
    need = max(columns.values()) + 1
    frames, boxes, scores, tracks, lines = [], [], [], [], []
    for line, row in body:
        if len(row) < need or (header is None and len(row) != need):
            raise InvalidInputError(
                f"{p}, line {line}: {len(row)} values, expected "
                f"{'at least ' if header is not None else ''}{need} ({list(columns)})"
            )
        frame_value = _number(p, line, "frame", row[columns["frame"]])
        box = _box(p, line, [row[columns[c]] for c in ("x", "y", "w", "h")])
        score = _number(p, line, "score", row[columns["score"]])
        if not frame_value.is_integer() or frame_value < 0:
            raise InvalidInputError(
                f"{p}, line {line}: frame {row[columns['frame']]!r} is not a non-negative integer"
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
    return _detections(p, frames, boxes, scores, tracks if has_tracks else None, lines)


def _read_mot(p: Path, rows: list[tuple[int, list[str]]], width: int) -> Detections:
    what = f"MOTChallenge {_MOT10 if width == 10 else _MOT7}"
    hint = (
        f" (read as {what}, the format of a headerless {width}-column file; a file "
        f"in the project format needs its header line {_PROJECT})"
    )
    frames, boxes, scores, ids, lines = [], [], [], [], []
    for line, row in rows:
        if len(row) != width:
            raise InvalidInputError(
                f"{p}, line {line}: {len(row)} values, but the first line has {width}{hint}"
            )
        cells = [c.strip() for c in row]
        if not _INTEGER.fullmatch(cells[0]) or int(cells[0]) < 1:
            raise InvalidInputError(
                f"{p}, line {line}: frame {cells[0]!r} is not an integer from 1 "
                f"(MOTChallenge frames count from 1){hint}"
            )
        if not _INTEGER.fullmatch(cells[1]) or int(cells[1]) < UNTRACKED_ID:
            raise InvalidInputError(
                f"{p}, line {line}: id {cells[1]!r} is not an integer track id or -1 "
                f"(untracked){hint}"
            )
        box = _box(p, line, cells[2:6])
        score = _number(p, line, "conf", cells[6])
        for name, value in zip(("x", "y", "z"), cells[7:], strict=False):
            _number(p, line, f"world {name}", value)
        frames.append(int(cells[0]) - 1)
        ids.append(int(cells[1]))
        boxes.append(box)
        scores.append(score)
        lines.append(line)
    id_arr = np.asarray(ids, dtype=np.int64)
    untracked = id_arr == UNTRACKED_ID
    if untracked.any() and not untracked.all():
        a, b = int(np.flatnonzero(~untracked)[0]), int(np.flatnonzero(untracked)[0])
        raise InvalidInputError(
            f"{p}, line {lines[b]}: id -1 (untracked) in a file whose line {lines[a]} has "
            f"track id {ids[a]}; a MOTChallenge file is either detections (all -1) or tracks"
        )
    tracks = None if untracked.all() else [str(i) for i in ids]
    return _detections(p, frames, boxes, scores, tracks, lines, format="motchallenge", frame_base=1)


def _detections(
    p: Path,
    frames: list[int],
    boxes: list[list[float]],
    scores: list[float],
    tracks: list[str] | None,
    lines: list[int],
    *,
    format: DetectionsFormat = "polypindex",
    frame_base: int = 0,
) -> Detections:
    return Detections(
        path=p,
        frame_ids=np.asarray(frames, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        scores=np.asarray(scores, dtype=np.float64),
        track_ids=np.asarray(tracks, dtype=object) if tracks is not None else None,
        lines=np.asarray(lines, dtype=np.int64),
        format=format,
        frame_base=frame_base,
    )


def frame_files_for(detections: Detections, files: dict[int, str]) -> dict[int, str]:
    """A frames folder's files keyed by the detections' frame ids.

    A folder's frame number is the one in the file name; a MOTChallenge sequence
    names its frames from 1 (``img1/000001.jpg``), so its files move down by
    ``frame_base`` to meet the 0-based frame ids. Other files are returned as given.
    """
    if not detections.frame_base:
        return files
    return {frame - detections.frame_base: path for frame, path in files.items()}


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
    linker: str = DEFAULT_LINKER,
) -> list[Tracklet]:
    """Tracklets of one procedure from its detections (by track id, else by ``linker``).

    Args:
        uid: the procedure UID (the tracklets' ``sequence_id``).
        detections: the boxes.
        config: gap / IoU / minimum length rule.
        min_score: boxes scoring below it are ignored.
        image_paths: frame id → image file (frames folders), else none.
        linker: for boxes without track ids: ``"bytetrack"`` (default) or ``"greedy"``.

    Returns:
        Tracklets ordered by start frame, keys ``uid/track/<i>``.
    """
    keep = detections.scores >= min_score
    frames, boxes = detections.frame_ids[keep], detections.boxes[keep]
    runs: list[np.ndarray] = []
    if detections.track_ids is None:
        runs = link(frames, boxes, detections.scores[keep], config, linker)
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
