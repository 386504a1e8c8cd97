"""A tracklet's frame strip for the viewer: a few of its source frames side by side, the
polyp's box drawn on each (docs/viewer.md#frame-strips).

The frames are read again from where the procedure was indexed from, only when that is
an image source inside the configured data roots:

- a COCO split (the stored source is its annotation file): the image files and the
  exact box of each frame, from the annotations;
- a frames folder (``frames:FOLDER detections:CSV``): the image files; the boxes are
  interpolated between the tracklet's stored first and last boxes.

A stored path relative to a data root or the home (``root:`` / ``home:``,
:mod:`indexer.locations`) is resolved against the roots and the home configured here, and
the result must still lie inside the data roots.

A procedure indexed from a video, or whose files moved, were deleted or lie outside
the data roots, has no strip: :class:`FramesUnavailableError` (409), with a message
that names no server path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from polypindex.indexer.locations import parse_source, resolve
from polypindex.indexer.sources import check_in_roots, frame_files
from polypindex.indexer.tables import ProcedureRecord, TrackletRecord
from polypindex.model.core.errors import ConflictError, InvalidInputError
from polypindex.model.data.image_header import MAX_IMAGE_PIXELS, ImageTooLargeError
from polypindex.model.data.preprocess import read_image

BOX_COLOUR_BGR = (60, 220, 60)
_GAP = 4


class FramesUnavailableError(ConflictError):
    """The source frames of a tracklet cannot be read (a video, moved or disallowed files)."""


@dataclass(frozen=True)
class StripFrames:
    """The frames a strip shows: image files and one box each; ``exact`` when the boxes
    are the annotated ones (else interpolated)."""

    paths: list[Path]
    boxes: np.ndarray  # (n, 4) xywh
    exact: bool


def pick_frames(frame_ids: Sequence[int], n: int) -> list[int]:
    """At most ``n`` of ``frame_ids``, evenly spread, first and last included."""
    ids = list(frame_ids)
    if len(ids) <= n:
        return ids
    picks = np.linspace(0, len(ids) - 1, num=n).round().astype(int)
    return [ids[i] for i in dict.fromkeys(picks.tolist())]


def interpolated_boxes(record: TrackletRecord, frames: Sequence[int]) -> np.ndarray:
    """Boxes at ``frames``, linear between the stored first and last boxes."""
    first = np.asarray(record.boxes.get("first") or record.boxes.get("mean"), dtype=np.float64)
    last = np.asarray(record.boxes.get("last") or first, dtype=np.float64)
    span = max(record.end_frame - record.start_frame, 1)
    t = (np.asarray(frames, dtype=np.float64) - record.start_frame) / span
    return first[None, :] + np.clip(t, 0.0, 1.0)[:, None] * (last - first)[None, :]


_COCO_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
_COCO_LOCK = threading.Lock()


def _coco_index(path: Path) -> dict[str, Any]:
    """``{(sequence, frame): file_name}`` and ``{(image_id, identity): bbox}`` of an
    annotation file, cached by path, size and modification time (one file kept)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _COCO_LOCK:
        if key in _COCO_CACHE:
            return _COCO_CACHE[key]
    data = json.loads(path.read_text())
    images = {
        (str(img["sequence_id"]), int(img["frame_id"])): (int(img["id"]), str(img["file_name"]))
        for img in data.get("images", [])
    }
    boxes = {
        (int(a["image_id"]), str(a.get("identity_id"))): [float(v) for v in a["bbox"]]
        for a in data.get("annotations", [])
    }
    index = {"images": images, "boxes": boxes}
    with _COCO_LOCK:
        _COCO_CACHE.clear()
        _COCO_CACHE[key] = index
    return index


def _unavailable(record: TrackletRecord, why: str) -> FramesUnavailableError:
    return FramesUnavailableError(f"no frame strip for tracklet {record.id}: {why}")


def _frame_ids(record: TrackletRecord) -> list[int]:
    stored = record.boxes.get("frame_ids")
    if isinstance(stored, list) and stored:
        return [int(f) for f in stored]
    return list(range(record.start_frame, record.end_frame + 1))


def strip_frames(
    record: TrackletRecord,
    procedure: ProcedureRecord,
    data_roots: Sequence[Path],
    n: int,
    home: Path | None = None,
) -> StripFrames:
    """Which files and boxes make ``record``'s strip of at most ``n`` frames.

    Args:
        record: the tracklet.
        procedure: its procedure (whose stored source is read again).
        data_roots: the configured data roots (confinement, and ``root:`` sources).
        n: most frames.
        home: the home (``home:`` sources).

    Raises:
        FramesUnavailableError: the frames cannot be read again (see the module doc).
    """
    frames = pick_frames(_frame_ids(record), n)
    parts = parse_source(procedure.source)
    if parts is None:
        raise _unavailable(record, "its source is not an image source the viewer can read")
    if parts.kind in ("video", "dicom"):
        raise _unavailable(
            record, f"it was indexed from a {parts.kind} file (strips read image files)"
        )
    try:
        where = check_in_roots(resolve(parts.input, home, data_roots), data_roots)
        if parts.kind == "frames":
            files = frame_files(where)
            missing = [f for f in frames if f not in files]
            if missing:
                raise _unavailable(record, f"frame {missing[0]} is no longer in its folder")
            paths = [check_in_roots(files[f], data_roots) for f in frames]
            return StripFrames(paths, interpolated_boxes(record, frames), exact=False)
        return _coco_frames(record, where, frames, data_roots)
    except (InvalidInputError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FramesUnavailableError):
            raise
        raise _unavailable(
            record,
            "its source files are not readable here (moved, deleted or outside the data roots)",
        ) from exc


def _coco_frames(
    record: TrackletRecord, annotations: Path, frames: Sequence[int], roots: Sequence[Path]
) -> StripFrames:
    sequence, identity, _ = record.key.rsplit("/", 2)
    index = _coco_index(annotations)
    images_dir = annotations.parent.parent / "images"
    paths: list[Path] = []
    boxes: list[list[float]] = []
    fallback = interpolated_boxes(record, frames)
    exact = True
    for i, frame in enumerate(frames):
        image_id, file_name = index["images"][(sequence, int(frame))]
        paths.append(check_in_roots(images_dir / file_name, roots))
        box = index["boxes"].get((image_id, identity))
        if box is None:
            exact = False
            box = fallback[i].tolist()
        boxes.append(box)
    return StripFrames(paths, np.asarray(boxes, dtype=np.float64), exact)


def tracklet_strip(
    record: TrackletRecord,
    procedure: ProcedureRecord,
    data_roots: Sequence[Path],
    n: int,
    height: int,
    home: Path | None = None,
) -> tuple[bytes, bool]:
    """``(JPEG bytes, exact boxes?)`` of ``record``'s strip of at most ``n`` frames (the
    arguments as for :func:`strip_frames`).

    Raises:
        FramesUnavailableError: the frames cannot be read again (see the module doc).
    """
    frames = strip_frames(record, procedure, data_roots, n, home)
    try:
        return render_strip(frames, height), frames.exact
    except ImageTooLargeError as exc:  # refused from its header, nothing decoded
        raise _unavailable(
            record, f"a source frame is over the pixel limit of {MAX_IMAGE_PIXELS} pixels"
        ) from exc
    except InvalidInputError as exc:  # an image file gone or undecodable since indexing
        raise _unavailable(record, "a source frame is missing or not decodable") from exc


def render_strip(frames: StripFrames, height: int, quality: int = 85) -> bytes:
    """The frames scaled to ``height`` pixels, each with its box, side by side (JPEG)."""
    tiles: list[np.ndarray] = []
    for path, box in zip(frames.paths, frames.boxes, strict=True):
        rgb = read_image(path)  # the pixel limit checked on its header first
        scale = height / rgb.shape[0]
        width = max(1, round(rgb.shape[1] * scale))
        tile = cv2.resize(
            np.ascontiguousarray(rgb[:, :, ::-1]), (width, height), interpolation=cv2.INTER_AREA
        )
        x, y, w, h = (float(v) * scale for v in box)
        thickness = max(2, round(height / 50))
        cv2.rectangle(
            tile,
            (round(x), round(y)),
            (round(x + w), round(y + h)),
            BOX_COLOUR_BGR,
            thickness,
        )
        tiles.append(tile)
    if not tiles:
        raise InvalidInputError("a strip needs at least one frame")
    gap = np.full((height, _GAP, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row.extend([gap, tile])
    ok, buf = cv2.imencode(".jpg", np.hstack(row), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidInputError("cannot encode the strip as JPEG")
    return buf.tobytes()
