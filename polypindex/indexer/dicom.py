"""DICOM input (docs/inputs.md#dicom): endoscopy videos and multi-frame endoscopic images.

Two encodings are read, with ``pydicom`` (the ``dicom`` extra):

- **Video Endoscopic Image Storage** with MPEG-4 AVC/H.264 pixel data (transfer syntaxes
  1.2.840.10008.1.2.4.102–106): the encapsulated bit stream is decoded by PyAV, front to
  back, one decoded frame held at a time;
- **multi-frame VL Endoscopic Image Storage** (or any multi-frame image) with JPEG
  baseline frames (1.2.840.10008.1.2.4.50): each frame decoded by the project's image
  decoder (:func:`model.data.preprocess.decode_image`), so a frame decodes to the same pixels
  as the same JPEG file in a frames folder.

Frame ``i`` of the file (``0 … NumberOfFrames − 1``) is frame id ``i`` of the detections
(the project format's 0-based frames; MOTChallenge's 1-based frames are read 0-based).

**No patient identifier leaves this module.** Only the pixel data, the frame count and
size, the frame rate and the Study (and, to tell two files of one study apart, SOP
Instance) UID are read; the procedure UID is ``dicom-`` + the first 16 hex digits of the
SHA-256 of the Study Instance UID, unless one is given. Patient name, id, birth date and
every other header value are never stored, logged, returned or put in an error message.

Every problem raises :class:`~model.core.errors.InvalidInputError` naming the file: not a
DICOM file, a single-frame image, an unsupported transfer syntax, no pixel data, fewer
frames than ``NumberOfFrames`` or than the detections need.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

from polypindex.indexer.av_frames import VideoReadError, decode_wanted
from polypindex.indexer.detections import (
    check_boxes_inside,
    detection_tracklets,
    read_detections_csv,
)
from polypindex.indexer.sources import (
    FrameStream,
    ProcedureSource,
    SourceOptions,
    check_in_roots,
)
from polypindex.model.core.errors import ConfigError, ImageReadError, InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.preprocess import decode_image
from polypindex.model.data.tracklets import DEFAULT_LINKER, DETECTION_SEPARATION_THRESH

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
H264_SYNTAXES = {
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
    "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
    "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
}
SUPPORTED_SYNTAXES = {JPEG_BASELINE: "JPEG Baseline (Process 1)", **H264_SYNTAXES}
DICOM_SUFFIXES = (".dcm", ".dicom", "")
# the only header values read (never a patient module attribute)
_HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "FrameTime",
    "CineRate",
    "RecommendedDisplayFrameRate",
)


@dataclass(frozen=True)
class DicomInfo:
    """What indexing needs of one DICOM file (no patient identifier).

    Attributes:
        path: the file.
        encoding: ``"h264"`` or ``"jpeg"``.
        transfer_syntax: its UID.
        sop_class: the SOP Class UID (Video / VL Endoscopic Image Storage, or another).
        n_frames: ``NumberOfFrames``.
        width, height: ``Columns``, ``Rows``.
        frame_rate: frames per second (``CineRate``, else ``1000 / FrameTime``, else
            ``RecommendedDisplayFrameRate``), ``None`` when the file gives none.
        study_hash: SHA-256 hex digest of the Study Instance UID (``None`` without one).
        instance_hash: SHA-256 hex digest of the SOP Instance UID (``None`` without one).
    """

    path: Path
    encoding: str
    transfer_syntax: str
    sop_class: str | None
    n_frames: int
    width: int
    height: int
    frame_rate: float | None
    study_hash: str | None
    instance_hash: str | None

    @property
    def procedure_uid(self) -> str:
        """``dicom-`` + 16 hex digits of the hashed Study Instance UID."""
        if self.study_hash is None:
            raise InvalidInputError(
                f"{self.path}: no Study Instance UID to name the procedure; give a UID"
            )
        return f"dicom-{self.study_hash[:16]}"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise ConfigError("DICOM input needs pydicom: pip install 'polypindex[dicom]'") from exc
    return pydicom


def _sha256(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def _read(path: Path, pixels: bool) -> Any:
    pydicom = _pydicom()
    if not path.is_file():
        raise InvalidInputError(f"DICOM file not found: {path}")
    try:
        if pixels:
            return pydicom.dcmread(str(path))
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        raise InvalidInputError(
            f"{path} is not a DICOM file (no DICM preamble; not a Part 10 file)"
        ) from None
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(
            f"{path}: cannot read the DICOM file: {type(exc).__name__}"
        ) from None


def _frame_rate(ds: Any) -> float | None:
    for tag, convert in (
        ("CineRate", float),
        ("FrameTime", lambda ms: 1000.0 / float(ms)),
        ("RecommendedDisplayFrameRate", float),
    ):
        value = ds.get(tag)
        try:
            if value not in (None, "") and float(value) > 0:
                return float(convert(value))
        except (TypeError, ValueError):
            continue
    return None


def read_dicom_info(path: str | Path) -> DicomInfo:
    """Check one DICOM file and read what indexing needs of it (not its pixels).

    Raises:
        InvalidInputError: not a DICOM file, a single-frame image, an unsupported
            transfer syntax, no frame size.
        ConfigError: pydicom is not installed.
    """
    p = Path(path)
    ds = _read(p, pixels=False)
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if syntax not in SUPPORTED_SYNTAXES:
        known = "; ".join(f"{uid} ({name})" for uid, name in SUPPORTED_SYNTAXES.items())
        raise InvalidInputError(
            f"{p}: transfer syntax {syntax or '(none)'} is not supported; supported: {known}"
        )
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{p}: NumberOfFrames is not a number") from None
    if n_frames < 2:
        raise InvalidInputError(
            f"{p}: a single-frame image; a procedure needs a video (Video Endoscopic Image "
            "Storage) or a multi-frame image"
        )
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise InvalidInputError(f"{p}: no frame size (Rows / Columns)")
    sop = ds.get("SOPClassUID")
    return DicomInfo(
        path=p,
        encoding="jpeg" if syntax == JPEG_BASELINE else "h264",
        transfer_syntax=syntax,
        sop_class=str(sop) if sop else None,
        n_frames=n_frames,
        width=int(cols),
        height=int(rows),
        frame_rate=_frame_rate(ds),
        study_hash=_sha256(ds.get("StudyInstanceUID")),
        instance_hash=_sha256(ds.get("SOPInstanceUID")),
    )


def _pixel_data(info: DicomInfo) -> bytes:
    ds = _read(info.path, pixels=True)
    data = ds.get("PixelData")
    if not data:
        raise InvalidInputError(f"{info.path}: no pixel data")
    return bytes(data)


def _jpeg_frames(info: DicomInfo) -> list[bytes]:
    from pydicom.encaps import generate_frames

    data = _pixel_data(info)
    try:
        frames = list(generate_frames(data, number_of_frames=info.n_frames))
    except (ValueError, EOFError) as exc:
        raise InvalidInputError(
            f"{info.path}: the encapsulated frames cannot be read ({exc}); "
            f"NumberOfFrames says {info.n_frames}"
        ) from None
    frames = [f for f in frames if f]
    if len(frames) < info.n_frames:
        raise InvalidInputError(
            f"{info.path}: {len(frames)} frame(s) in the pixel data, but NumberOfFrames says "
            f"{info.n_frames} (missing frames)"
        )
    return frames


def _video_bytes(info: DicomInfo) -> bytes:
    from pydicom.encaps import generate_fragments

    data = _pixel_data(info)
    try:
        stream = b"".join(generate_fragments(data[8 + int.from_bytes(data[4:8], "little") :]))
    except (ValueError, EOFError, IndexError) as exc:
        raise InvalidInputError(
            f"{info.path}: the encapsulated video cannot be read ({exc})"
        ) from None
    if not stream:
        raise InvalidInputError(f"{info.path}: the encapsulated video is empty (missing frames)")
    return stream


def stream_dicom(info: DicomInfo, wanted: Iterable[int]) -> FrameStream:
    """Yield ``(frame, RGB uint8 (H, W, 3))`` for the wanted frames, in increasing order.

    Raises:
        InvalidInputError: a frame cannot be decoded; :class:`VideoReadError` when the
            video ends before the last wanted frame.
    """
    todo = sorted({int(f) for f in wanted})
    if not todo:
        return
    if info.encoding == "jpeg":
        frames = _jpeg_frames(info)
        for f in todo:
            try:
                yield f, decode_image(frames[f])
            except ImageReadError as exc:
                raise ImageReadError(f"{info.path}: cannot decode frame {f}: {exc}") from None
        return
    yield from _stream_h264(info, todo)


def _stream_h264(info: DicomInfo, todo: Sequence[int]) -> FrameStream:
    import av

    stream_bytes = _video_bytes(info)
    annex_b = stream_bytes.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    try:
        container = av.open(io.BytesIO(stream_bytes), mode="r", format="h264" if annex_b else None)
    except (av.error.FFmpegError, OSError) as exc:  # type: ignore[attr-defined]
        raise VideoReadError(f"{info.path}: cannot open the encapsulated video: {exc}") from None
    yield from decode_wanted(
        container,
        todo,
        0,
        lambda at, exc: f"{info.path}: cannot decode the video after frame {at}: {exc}",
        lambda at, need: (
            f"{info.path}: the video ends after frame {at}, but detections need "
            f"frame {need} (NumberOfFrames says {info.n_frames}; missing frames)"
        ),
    )


def dicom_source(
    path: str | Path,
    detections_csv: str | Path,
    uid: str | None = None,
    *,
    roots: Sequence[str | Path] | None = None,
    **options: Unpack[SourceOptions],
) -> ProcedureSource:
    """A procedure from a DICOM file and its detections CSV, like ``video_source``.

    UID default: ``dicom-`` + the hashed Study Instance UID. With ``roots``, the file
    must resolve inside them.

    Raises:
        InvalidInputError: a refused file (module docstring), a detection of a frame the
            file does not have or a box outside its frames (naming the CSV line).
    """
    p = Path(path)
    if roots is not None:
        check_in_roots(p, roots, f"DICOM file {p.name!r}")
    info = read_dicom_info(p)
    detections = read_detections_csv(detections_csv)
    beyond = detections.frame_ids >= info.n_frames
    if beyond.any():
        i = int(beyond.argmax())
        raise InvalidInputError(
            f"{detections.path}, line {int(detections.lines[i])}: frame "
            f"{int(detections.frame_ids[i])} is beyond the {info.n_frames} frames of {p.name}"
        )
    check_boxes_inside(detections, info.width, info.height, f"DICOM {p.name}")
    config = options.get("config") or TrackletConfig(separation_thresh=DETECTION_SEPARATION_THRESH)
    name = uid or info.procedure_uid
    return ProcedureSource(
        uid=name,
        dataset_id=options.get("dataset_id"),
        source=f"dicom:{p} detections:{detections.path}",
        tracklets=detection_tracklets(
            name,
            detections,
            config,
            options.get("min_score", 0.0),
            linker=options.get("linker", DEFAULT_LINKER),
        ),
        frames=lambda wanted: stream_dicom(info, wanted),
    )


def dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files of a folder (``.dcm``, ``.dicom`` or no suffix), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"DICOM folder not found: {root}")
    files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in DICOM_SUFFIXES)
    if not files:
        raise InvalidInputError(f"{root} holds no DICOM files (.dcm, .dicom or no suffix)")
    return files


def dicom_sources(
    target: str | Path,
    detections: str | Path,
    uid: str | None = None,
    *,
    roots: Sequence[str | Path] | None = None,
    **options: Unpack[SourceOptions],
) -> list[ProcedureSource]:
    """The procedures of ``polypindex index dicom FILE|DIR --detections CSV|DIR``.

    A FILE takes ``detections`` as its CSV. A DIR takes one procedure per DICOM file,
    each with ``detections/<file stem>.csv`` (or ``detections`` itself when the DIR
    holds one file and it is a CSV). Files of one study get their SOP Instance UID's hash
    appended (``dicom-<study>-<instance>``); ``uid`` is allowed for one file only.
    """
    t, d = Path(target), Path(detections)
    if not t.is_dir():
        return [dicom_source(t, d, uid, roots=roots, **options)]
    files = dicom_files(t)
    if uid is not None and len(files) > 1:
        raise InvalidInputError(f"{t} holds {len(files)} DICOM files; a UID names one procedure")
    csvs = [d] if (len(files) == 1 and d.is_file()) else [d / f"{f.stem}.csv" for f in files]
    infos = [read_dicom_info(f) for f in files]
    studies = [i.procedure_uid for i in infos]
    out = []
    for f, info, csv, study in zip(files, infos, csvs, studies, strict=True):
        name = uid
        if name is None and studies.count(study) > 1:
            if info.instance_hash is None:
                raise InvalidInputError(f"{f}: no SOP Instance UID to tell it from its study's")
            name = f"{study}-{info.instance_hash[:8]}"
        if not csv.is_file():
            raise InvalidInputError(f"detections of {f.name} not found: expected {csv}")
        out.append(dicom_source(f, csv, name, roots=roots, **options))
    return out
