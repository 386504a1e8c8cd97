"""Where procedures come from: a COCO split, a video file + detections CSV, a frames folder + CSV.

Each source gives :class:`ProcedureSource` objects: a procedure UID, its
tracklets (docs/method.md#tracklets) and a way to stream its frames in increasing frame order,
so the pipeline decodes each needed frame once and never holds a whole video.

A video or a frames folder comes with a detections CSV (:mod:`indexer.detections`);
in a video, frame numbers count from ``first_frame`` (0 by default; MOT files count
from 1).

Every problem raises :class:`~model.core.errors.InvalidInputError` (or a subclass)
naming the file and the line or frame, before anything is written.

Confinement: given the data roots (``roots=``), every file a source will read (a
COCO annotation file and each image its ``file_name``s name, a frames folder's
frames) is resolved, symlinks followed, and must lie inside them
(:class:`PathNotAllowedError` otherwise, raised before any frame is read). A path that
cannot be resolved at all (an unknown ``~user``, a component over 255 bytes, a symlink
loop) is an InvalidInputError naming the field (:func:`indexer.path_checks.resolve_input`).
With roots, every frame, image and video is opened and then checked again by what the
open descriptor points at (:func:`open_inside`): a symlink swapped after the check is
refused, never followed. Every procedure UID is 1 to :data:`MAX_UID_LENGTH` characters
without control characters (:func:`indexer.input_checks.check_uid`, when the source is made).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypedDict, Unpack

import numpy as np

from polypindex.indexer.av_frames import VideoReadError, decode_wanted
from polypindex.indexer.detections import (
    Detections,
    check_boxes_inside,
    detection_tracklets,
    read_detections_csv,
)
from polypindex.indexer.input_checks import check_uid, opened_path, resolve_input
from polypindex.model.core.errors import ImageReadError, InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.preprocess import read_image
from polypindex.model.data.tracklets import DEFAULT_LINKER, DETECTION_SEPARATION_THRESH, Tracklet

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

FrameStream = Iterator[tuple[int, np.ndarray]]
Roots = Sequence[str | Path]


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

    def __post_init__(self) -> None:
        check_uid(self.uid, "procedure UID")


class SourceOptions(TypedDict, total=False):
    """The options of a video or a frames folder with its detections CSV, besides the paths.

    Attributes:
        config: the gap / IoU / minimum length rule (default: ``TrackletConfig`` with the
            detection inputs' gap of ``DETECTION_SEPARATION_THRESH`` frames).
        min_score: boxes scoring below it are ignored (default ``0``).
        dataset_id: the dataset the procedure belongs to (default none).
        linker: how boxes without track ids are linked: ``"bytetrack"`` (default) or
            ``"greedy"`` (docs/inputs.md#linkers).
    """

    config: TrackletConfig | None
    min_score: float
    dataset_id: str | None
    linker: str


def check_in_roots(
    path: str | Path, roots: Sequence[str | Path], what: str = "the input path"
) -> Path:
    """``path`` resolved (symlinks and ``..`` followed) if it lies inside one of ``roots``.

    The message names ``what`` (a field, a file relative to a root), never the path
    itself nor the roots (no server path reaches a client).

    Raises:
        PathNotAllowedError: it lies outside every root, or no root is configured.
    """
    if "\x00" in str(path):
        raise PathNotAllowedError(f"{what}: a path cannot contain a NUL byte")
    resolved = resolve_input(path, what)  # InvalidInputError naming `what`
    allowed = [resolve_input(r, "a configured data root") for r in roots]
    if not allowed:
        raise PathNotAllowedError(f"{what}: no data roots are configured, so no input is allowed")
    if not _inside(resolved, allowed):
        raise PathNotAllowedError(
            f"{what} lies outside the configured data roots (POLYPINDEX_DATA_ROOTS; "
            "symlinks are followed)"
        )
    return resolved


def _inside(resolved: Path, allowed: Sequence[Path]) -> bool:
    return any(resolved == r or resolved.is_relative_to(r) for r in allowed)


def open_inside(path: str | Path, roots: Roots, what: str) -> BinaryIO:
    """``path`` opened for reading if the file *opened* lies inside ``roots``.

    Checked before the open (:func:`check_in_roots`) and again after it, by the real
    path of the open descriptor (or, where the system cannot say, its device and inode
    against the checked path's): a symlink swapped in between is refused, never read.

    Raises:
        PathNotAllowedError: outside the roots, before or after the open.
        InvalidInputError: the path cannot be resolved (see :func:`check_in_roots`).
        OSError: it cannot be opened (missing, unreadable).
    """
    checked = check_in_roots(path, roots, what)
    fd = os.open(checked, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        real = opened_path(fd)
        if real is None:  # no /proc: the opened file must be the one checked
            st, was = os.fstat(fd), os.stat(checked)
            same = (st.st_dev, st.st_ino) == (was.st_dev, was.st_ino)
        else:
            same = _inside(real, [resolve_input(r, "a configured data root") for r in roots])
        if not same:
            raise PathNotAllowedError(
                f"{what} lies outside the configured data roots (it changed after it was "
                "checked; symlinks are followed)"
            )
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_image_inside(path: str | Path, roots: Roots, what: str) -> np.ndarray:
    """An image file read (RGB uint8, :func:`~model.data.preprocess.read_image`) from the
    descriptor :func:`open_inside` opened, so the file decoded is the file checked;
    ImageReadError names ``what``, not the path."""
    with open_inside(path, roots, what) as f:
        by_fd = f"/proc/self/fd/{f.fileno()}"  # the open file itself, however renamed
        source = by_fd if os.path.exists(by_fd) else str(path)
        try:
            return read_image(source)
        except ImageReadError as exc:  # ImageTooLargeError stays one
            raise type(exc)(str(exc).replace(source, what)) from exc


def confine_sources(
    sources: Sequence[ProcedureSource], roots: Sequence[str | Path], what: str
) -> None:
    """Check that every frame file the sources will read lies inside ``roots``.

    Raises:
        PathNotAllowedError: naming the procedure and the first file outside (its
            name as the input gave it when that is relative, else only its file name).
    """
    for source in sources:
        for tracklet in source.tracklets:
            for image in tracklet.image_paths:
                shown = Path(image).name
                check_in_roots(image, roots, f"{what}: image {shown!r} of {source.uid!r}")


def _detections_source(
    uid: str,
    detections: Detections,
    source: str,
    frames: Callable[[Sequence[int]], FrameStream],
    image_paths: dict[int, str] | None = None,
    **options: Unpack[SourceOptions],
) -> ProcedureSource:
    """The procedure of one detections CSV over frames from ``source`` (a video, a folder)."""
    config = options.get("config") or TrackletConfig(separation_thresh=DETECTION_SEPARATION_THRESH)
    min_score = options.get("min_score", 0.0)
    return ProcedureSource(
        uid=uid,
        dataset_id=options.get("dataset_id"),
        source=f"{source} detections:{detections.path}",
        tracklets=detection_tracklets(
            uid,
            detections,
            config,
            min_score,
            image_paths,
            linker=options.get("linker", DEFAULT_LINKER),
        ),
        frames=frames,
    )


# -- video ------------------------------------------------------------------------------


def _open_video(path: Path, roots: Roots | None = None) -> object:
    """The container of ``path``; with ``roots``, read from a descriptor opened inside
    them (:func:`open_inside`), so the file decoded is the file checked."""
    import av  # PyAV: imported here so the package imports without it

    try:
        if roots is None:
            return av.open(str(path))
        f = open_inside(path, roots, "video")
        try:
            return av.open(f)
        except BaseException:
            f.close()
            raise
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise VideoReadError(f"cannot open video {path}: {exc}") from exc


def probe_video(path: str | Path, roots: Roots | None = None) -> tuple[int, int]:
    """``(width, height)`` of a video's first video stream."""
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"video file not found: {p}")
    container = _open_video(p, roots)
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


def stream_video(
    path: str | Path, wanted: Iterable[int], first_frame: int = 0, roots: Roots | None = None
) -> FrameStream:
    """Decode a video once, front to back, yielding only the wanted frames (RGB uint8).

    Frame numbers count decoded frames from ``first_frame``. Only one decoded
    frame is held at a time.

    Raises:
        VideoReadError: the file cannot be decoded (e.g. truncated) or ends before
            the last wanted frame.
    """

    p = Path(path)
    todo = sorted({int(f) for f in wanted})
    if not todo:
        return
    container = _open_video(p, roots)
    yield from decode_wanted(
        container,
        todo,
        first_frame,
        lambda at, exc: f"cannot decode video {p} after frame {at}: {exc} (truncated or corrupt?)",
        lambda at, need: (
            f"video {p} ends after frame {at}, but detections need frame {need} "
            f"(truncated video, or detections of another video?)"
        ),
    )


def video_source(
    video: str | Path,
    detections_csv: str | Path,
    uid: str | None = None,
    *,
    first_frame: int = 0,
    roots: Roots | None = None,
    **options: Unpack[SourceOptions],
) -> ProcedureSource:
    """A procedure from a video file and its detections CSV (UID default: the video's
    stem). With ``roots``, the video is opened inside them each time it is read."""
    video_path = Path(video)
    detections = read_detections_csv(detections_csv)
    width, height = probe_video(video_path, roots)
    check_boxes_inside(detections, width, height, f"video {video_path}")
    if np.any(detections.frame_ids < first_frame):
        i = int(np.argmin(detections.frame_ids))
        raise InvalidInputError(
            f"{detections.path}, line {int(detections.lines[i])}: frame "
            f"{int(detections.frame_ids[i])} is before the first frame number {first_frame}"
        )
    return _detections_source(
        uid or video_path.stem,
        detections,
        f"video:{video_path}",
        lambda wanted: stream_video(video_path, wanted, first_frame, roots),
        **options,
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
    image = read_image(path)  # the pixel limit from its header; ImageReadError names the file
    return image.shape[1], image.shape[0]


def stream_files(
    files: dict[int, str], wanted: Iterable[int], roots: Roots | None = None
) -> FrameStream:
    """Read the wanted frames of a frames folder in increasing order; with ``roots``,
    each through :func:`open_inside` (checked again once open)."""
    for frame in sorted({int(f) for f in wanted}):
        path = files[frame]
        if roots is None:
            yield frame, read_image(path)
        else:
            yield frame, read_image_inside(path, roots, f"frame file {Path(path).name!r}")


def frames_source(
    folder: str | Path,
    detections_csv: str | Path,
    uid: str | None = None,
    *,
    roots: Sequence[str | Path] | None = None,
    **options: Unpack[SourceOptions],
) -> ProcedureSource:
    """A procedure from a folder of frame images and its detections CSV (UID default: the
    folder name). With ``roots``, every frame file must resolve inside them."""
    root = Path(folder)
    files = frame_files(root)
    if roots is not None:
        for f in files.values():
            check_in_roots(f, roots, f"frames folder: frame file {Path(f).name!r}")
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
    except ImageReadError as exc:  # ImageTooLargeError (over the pixel limit) stays one
        raise type(exc)(f"cannot read frame size from {first}: {exc}") from exc
    check_boxes_inside(detections, width, height, f"frames folder {root}")
    return _detections_source(
        uid or root.name,
        detections,
        f"frames:{root}",
        lambda wanted: stream_files(files, wanted, roots),
        image_paths=files,
        **options,
    )


# -- COCO -------------------------------------------------------------------------------


def procedure_uid(sequence_id: str, dataset_id: str | None) -> str:
    """The procedure UID of a COCO sequence: ``dataset_id:sequence_id``, or ``sequence_id``."""
    return f"{dataset_id}:{sequence_id}" if dataset_id else str(sequence_id)


def coco_sources(
    root: str | Path,
    split: str,
    config: TrackletConfig | None = None,
    *,
    roots: Sequence[str | Path] | None = None,
) -> list[ProcedureSource]:
    """One procedure per sequence of a COCO split (docs/method.md#data-format), ordered by
    UID. With ``roots``, the annotation file and every image it names (absolute
    ``file_name``s included) must resolve inside them, checked before any is read."""
    from polypindex.model.data.coco import (  # pycocotools is slow to import
        annotation_path,
        load_coco_split,
    )

    if roots is not None:
        check_in_roots(
            annotation_path(root, split), roots, f"the annotation file of split {split!r}"
        )
    # with roots, no image is looked at before it is confined: whether a file outside
    # exists is never told (the existence check follows the confinement below)
    data = load_coco_split(root, split, check_images_exist=roots is None)
    source = str(annotation_path(root, split))
    if roots is not None:
        _confine_images(data.coco.imgs.values(), Path(root), roots, split)
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
                frames=lambda wanted, files=files: stream_files(files, wanted, roots),  # type: ignore[misc]
            )
        )
    out.sort(key=lambda s: s.uid)
    if roots is not None:
        confine_sources(out, roots, f"COCO split {split!r}")
    return out


def _confine_images(
    images: Iterable[dict[str, object]], root: Path, roots: Roots, split: str
) -> None:
    """Every image of a COCO split inside ``roots``, then there (named by its
    ``file_name`` when relative, else by its file name only)."""
    for image in images:
        name = str(image["file_name"])
        shown = name if not Path(name).is_absolute() else Path(name).name
        what = f"COCO split {split!r}: image {shown!r}"
        path = check_in_roots(root / "images" / name, roots, what)
        if not path.is_file():
            raise InvalidInputError(f"{what} does not exist")
