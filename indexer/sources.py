"""Where procedures come from: a COCO split, a video file + detections CSV, a frames folder + CSV.

Each source gives :class:`ProcedureSource` objects: a procedure UID, its
tracklets (SPEC §3) and a way to stream its frames in increasing frame order,
so the pipeline decodes each needed frame once and never holds a whole video.

Detections CSV (MOT style), one box per line::

    frame,x,y,w,h,score[,track_id]

with that header (columns in any order, extra columns ignored), or without a
header in exactly that column order. Boxes are ``[x, y, w, h]`` pixels.
Frame numbers count from ``first_frame`` (0 by default; MOT files count from 1).
Boxes with a track id are grouped by track and cut with the gap/IoU rule;
boxes without one are linked by the greedy IoU tracker
(:func:`model.tracklets.link_detections`).

Every problem raises :class:`~model.errors.InvalidInputError` (or a subclass)
naming the file and the line or frame, before anything is written.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polypindex.model.config import TrackletConfig
from polypindex.model.errors import ImageReadError, InvalidInputError
from polypindex.model.preprocess import read_image
from polypindex.model.tracklets import Tracklet, link_detections, split_runs

CSV_COLUMNS = ("frame", "x", "y", "w", "h", "score")
TRACK_COLUMN = "track_id"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Boxes may touch the border; allow half a pixel of rounding outside it (as model.coco).
_BORDER_TOLERANCE = 0.5

FrameStream = Iterator[tuple[int, np.ndarray]]


class VideoReadError(InvalidInputError):
    """A video file cannot be opened or decoded, or ends before the frames it needs."""


class PathNotAllowedError(InvalidInputError):
    """An input path lies outside the configured data roots."""


@dataclass(frozen=True)
class ProcedureSource:
    """One procedure to index.

    Attributes:
        uid: the procedure UID (unique in the store).
        dataset_id: the dataset it belongs to, if known.
        source: a human-readable description of the input (stored with the procedure).
        tracklets: its tracklets (``identity_id`` is ``None`` for raw detections).
        frames: ``frames(wanted)`` yields ``(frame_id, RGB uint8 (H, W, 3))`` for every
            frame id in ``wanted``, in increasing order, decoding each once.
    """

    uid: str
    dataset_id: str | None
    source: str
    tracklets: Sequence[Tracklet]
    frames: Callable[[Sequence[int]], FrameStream] = field(repr=False)


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


def check_in_roots(path: str | Path, roots: Sequence[str | Path]) -> Path:
    """``path`` resolved (symlinks and ``..`` followed) if it lies inside one of ``roots``.

    Raises:
        PathNotAllowedError: it lies outside every root, or no root is configured.
    """
    resolved = Path(path).expanduser().resolve()
    allowed = [Path(r).expanduser().resolve() for r in roots]
    if not allowed:
        raise PathNotAllowedError(f"{path}: no data roots are configured, so no input is allowed")
    if not any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        raise PathNotAllowedError(
            f"{path} is outside the configured data roots {[str(r) for r in allowed]}"
        )
    return resolved


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


# -- video ------------------------------------------------------------------------------


def _open_video(path: Path) -> object:
    import av  # PyAV: imported here so the package imports without it

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise VideoReadError(f"cannot open video {path}: {exc}") from exc


def probe_video(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a video's first video stream."""
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"video file not found: {p}")
    container = _open_video(p)
    try:
        streams = container.streams.video  # type: ignore[attr-defined]
        if not streams:
            raise VideoReadError(f"{p} has no video stream")
        ctx = streams[0].codec_context
        if not ctx.width or not ctx.height:
            raise VideoReadError(f"{p}: the video stream has no frame size")
        return int(ctx.width), int(ctx.height)
    finally:
        container.close()  # type: ignore[attr-defined]


def stream_video(path: str | Path, wanted: Iterable[int], first_frame: int = 0) -> FrameStream:
    """Decode a video once, front to back, yielding only the wanted frames (RGB uint8).

    Frame numbers count decoded frames from ``first_frame``. Only one decoded
    frame is held at a time.

    Raises:
        VideoReadError: the file cannot be decoded (e.g. truncated) or ends before
            the last wanted frame.
    """
    import av

    p = Path(path)
    todo = sorted({int(f) for f in wanted})
    if not todo:
        return
    container = _open_video(p)
    position = first_frame - 1
    at = 0
    try:
        stream = container.streams.video[0]  # type: ignore[attr-defined]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):  # type: ignore[attr-defined]
                position += 1
                if position < todo[at]:
                    continue
                yield position, frame.to_ndarray(format="rgb24")
                at += 1
                if at == len(todo):
                    return
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            raise VideoReadError(
                f"cannot decode video {p} after frame {position}: {exc} (truncated or corrupt?)"
            ) from exc
    finally:
        container.close()  # type: ignore[attr-defined]
    raise VideoReadError(
        f"video {p} ends after frame {position}, but detections need frame {todo[at]} "
        f"(truncated video, or detections of another video?)"
    )


def video_source(
    video: str | Path,
    detections_csv: str | Path,
    uid: str | None = None,
    *,
    config: TrackletConfig | None = None,
    first_frame: int = 0,
    min_score: float = 0.0,
    dataset_id: str | None = None,
) -> ProcedureSource:
    """A procedure from a video file and its detections CSV (UID default: the video's stem)."""
    video_path = Path(video)
    detections = read_detections_csv(detections_csv)
    width, height = probe_video(video_path)
    check_boxes_inside(detections, width, height, f"video {video_path}")
    if np.any(detections.frame_ids < first_frame):
        i = int(np.argmin(detections.frame_ids))
        raise InvalidInputError(
            f"{detections.path}, line {int(detections.lines[i])}: frame "
            f"{int(detections.frame_ids[i])} is before the first frame number {first_frame}"
        )
    uid = uid or video_path.stem
    tracklets = detection_tracklets(uid, detections, config or TrackletConfig(), min_score)
    return ProcedureSource(
        uid=uid,
        dataset_id=dataset_id,
        source=f"video:{video_path} detections:{detections.path}",
        tracklets=tracklets,
        frames=lambda wanted: stream_video(video_path, wanted, first_frame),
    )


# -- frames folder ----------------------------------------------------------------------


def frame_files(folder: str | Path) -> dict[int, str]:
    """Frame id → image file of a frames folder; the id is the last number in the file name."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"frames folder not found: {root}")
    out: dict[int, str] = {}
    for f in sorted(root.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        numbers = re.findall(r"\d+", f.stem)
        if not numbers:
            raise InvalidInputError(f"{f}: a frame file name must contain its frame number")
        frame = int(numbers[-1])
        if frame in out:
            raise InvalidInputError(f"{f} and {out[frame]} both claim frame {frame}")
        out[frame] = str(f)
    if not out:
        raise InvalidInputError(f"{root} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _image_size(path: str) -> tuple[int, int]:
    image = read_image(path)  # ImageReadError names the file
    return image.shape[1], image.shape[0]


def stream_files(files: dict[int, str], wanted: Iterable[int]) -> FrameStream:
    """Read the wanted frames of a frames folder in increasing order."""
    for frame in sorted({int(f) for f in wanted}):
        yield frame, read_image(files[frame])


def frames_source(
    folder: str | Path,
    detections_csv: str | Path,
    uid: str | None = None,
    *,
    config: TrackletConfig | None = None,
    min_score: float = 0.0,
    dataset_id: str | None = None,
) -> ProcedureSource:
    """A procedure from a folder of frame images and its detections CSV (UID default: the folder name)."""
    root = Path(folder)
    files = frame_files(root)
    detections = read_detections_csv(detections_csv)
    missing = sorted(set(detections.frame_ids.tolist()) - set(files))
    if missing:
        i = int(np.flatnonzero(detections.frame_ids == missing[0])[0])
        raise InvalidInputError(
            f"{detections.path}, line {int(detections.lines[i])}: frame {missing[0]} has no image "
            f"in {root} ({len(missing)} frame(s) missing)"
        )
    first = files[min(files)]
    try:
        width, height = _image_size(first)
    except ImageReadError as exc:
        raise ImageReadError(f"cannot read frame size from {first}: {exc}") from exc
    check_boxes_inside(detections, width, height, f"frames folder {root}")
    uid = uid or root.name
    tracklets = detection_tracklets(
        uid, detections, config or TrackletConfig(), min_score, image_paths=files
    )
    return ProcedureSource(
        uid=uid,
        dataset_id=dataset_id,
        source=f"frames:{root} detections:{detections.path}",
        tracklets=tracklets,
        frames=lambda wanted: stream_files(files, wanted),
    )


# -- COCO -------------------------------------------------------------------------------


def procedure_uid(sequence_id: str, dataset_id: str | None) -> str:
    """The procedure UID of a COCO sequence: ``dataset_id:sequence_id``, or ``sequence_id``."""
    return f"{dataset_id}:{sequence_id}" if dataset_id else str(sequence_id)


def coco_sources(
    root: str | Path, split: str, config: TrackletConfig | None = None
) -> list[ProcedureSource]:
    """One procedure per sequence of a COCO split (SPEC §2), ordered by UID."""
    from polypindex.model.coco import (  # pycocotools is slow to import
        annotation_path,
        load_coco_split,
    )

    data = load_coco_split(root, split)
    source = str(annotation_path(root, split))
    dataset_ids: dict[str, str | None] = {}
    for image in data.coco.imgs.values():
        seq = str(image["sequence_id"])
        if dataset_ids.get(seq) is None:
            value = image.get("dataset_id")
            dataset_ids[seq] = str(value) if value not in (None, "") else None
    by_sequence: dict[str, list[Tracklet]] = {seq: [] for seq in data.sequences}
    for tracklet in data.tracklets(config or TrackletConfig()):
        by_sequence[tracklet.sequence_id].append(tracklet)
    out = []
    for seq, tracklets in by_sequence.items():
        files: dict[int, str] = {}
        for t in tracklets:
            for frame, path in zip(t.frame_ids.tolist(), t.image_paths, strict=True):
                if files.setdefault(int(frame), path) != path:
                    raise InvalidInputError(
                        f"{source}: sequence {seq!r} has two images for frame {frame}: "
                        f"{files[int(frame)]} and {path}"
                    )
        out.append(
            ProcedureSource(
                uid=procedure_uid(seq, dataset_ids.get(seq)),
                dataset_id=dataset_ids.get(seq),
                source=source,
                tracklets=tracklets,
                frames=lambda wanted, files=files: stream_files(files, wanted),  # type: ignore[misc]
            )
        )
    return sorted(out, key=lambda s: s.uid)
