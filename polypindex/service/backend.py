"""What the service does with a request's tracklets before any search or decision:
each query tracklet (an indexed id, frames or an embedding) as one unit vector
(:class:`QueryEmbedder`, :func:`embed_input`, :func:`decode_frames`); and the writes
(:func:`submit_job`, :func:`delete_procedure`).

Routers receive the loaded objects through :mod:`service.deps`; the searches are
:mod:`service.search`, the predictions and re-ID decisions :mod:`service.decisions`,
the viewer's reads :mod:`service.read`.
"""

from __future__ import annotations

import base64
import binascii
import math
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from polypindex.indexer.embed import thumbnail_dir
from polypindex.indexer.jobs import JobRecord, JobRunner
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRecord
from polypindex.model.core.errors import (
    EncoderMismatchError,
    ImageReadError,
    IndexNotReadyError,
    InvalidInputError,
)
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.preprocess import crop_frame, decode_image
from polypindex.service import metrics
from polypindex.service.errors import field_error
from polypindex.service.limits import check_image_b64_lengths
from polypindex.service.resources import Encoder
from polypindex.service.schemas import FrameInput, TrackletInput
from polypindex.service.settings import Settings
from polypindex.service.upkeep import IndexUpkeep

__all__ = [
    "EmbeddedInput",
    "QueryEmbedder",
    "decode_frames",
    "delete_procedure",
    "embed_input",
    "submit_job",
]


# -- query embedding ---------------------------------------------------------------------


def _b64_bytes(text: str, where: str, max_bytes: int) -> bytes:
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line-wrapped base64
    if len(text) // 4 * 3 > max_bytes + 2:
        raise InvalidInputError(
            f"{where}: the image is about {len(text) // 4 * 3} bytes, over the limit of "
            f"{max_bytes} bytes per frame"
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{where}: not valid base64 ({exc})") from exc
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"{where}: the image is {len(data)} bytes, over the limit of {max_bytes} bytes per frame"
        )
    return data


def decode_frames(
    frames: Sequence[FrameInput],
    where: str,
    settings: Settings,
    crop: PreprocessConfig | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode a query's frames, one at a time: RGB uint8 images and ``(s, 4)`` boxes.

    With ``crop`` (the encoder's preprocessing), each frame is cropped around its box
    as soon as it is decoded (:func:`~polypindex.model.data.preprocess.crop_frame`) and
    the full frame dropped; the box returned for it then spans its whole crop, which
    the encoder's own crop reproduces exactly. So at most one full frame is held at a
    time (``max_image_pixels`` × 3 bytes) beside the crops (``im_size``² × 3 bytes each).
    Without it, the full frames are returned.

    Raises:
        RequestValidationError: more frames than ``settings.max_frames_per_request``.
        InvalidInputError / ImageReadError: invalid base64 or an undecodable image; the
            message names the frame (``body.query.frames.3.image_b64: ...``).
        ImageTooLargeError: a frame over ``max_image_pixels`` (413, from its header).
    """
    if len(frames) > settings.max_frames_per_request:
        raise field_error(
            (*where.split("."), "frames"),
            f"{len(frames)} frames, at most {settings.max_frames_per_request} per request",
        )
    check_image_b64_lengths(frames, where, settings.max_image_bytes)  # the schema's maxLength
    images = []
    boxes = np.asarray([f.bbox for f in frames], dtype=np.float64).reshape(-1, 4)
    for i, frame in enumerate(frames):
        path = f"{where}.frames.{i}.image_b64"
        data = _b64_bytes(frame.image_b64, path, settings.max_image_bytes)
        try:  # the pixel limit is read from the header, before decoding
            image = decode_image(data, max_pixels=settings.max_image_pixels)
        except ImageReadError as exc:  # ImageTooLargeError stays one (413)
            raise type(exc)(f"{path}: {exc}") from exc
        del data
        if crop is not None:
            image = crop_frame(image, boxes[i], crop)
            boxes[i] = _whole_crop_box(crop)
        images.append(image)
    return images, boxes


def _whole_crop_box(config: PreprocessConfig) -> np.ndarray:
    """The box whose enlarged window (``bbox_scale_factor``×, clamped) is a whole
    ``im_size``² crop, so cropping a crop with it gives the crop back unchanged."""
    size = float(config.im_size)
    side = size / config.bbox_scale_factor
    return np.array([(size - side) / 2.0, (size - side) / 2.0, side, side])


def _crop_config(encoder: Encoder) -> PreprocessConfig | None:
    """The encoder's preprocessing, when it says it crops with one (the ONNX encoders)."""
    config = getattr(encoder, "preprocess", None)
    return config if isinstance(config, PreprocessConfig) else None


@dataclass(frozen=True)
class EmbeddedInput:
    """A query tracklet as a vector, and the stored tracklet it is (if given by id)."""

    vector: np.ndarray
    record: TrackletRecord | None = None


def embed_input(
    value: TrackletInput,
    where: str,
    encoder: Encoder,
    store: Store | None,
    settings: Settings,
    slots: AbstractContextManager[object] | None = None,
) -> EmbeddedInput:
    """A :class:`TrackletInput` → its float32 ``(D,)`` L2-normalised embedding.

    Args:
        value: the input (exactly one of id, frames, embedding).
        where: its field path for messages, e.g. ``"body.query"``.
        encoder: the loaded encoder (embeds frames; says the expected dim and version).
        store: the store (needed for ``tracklet_id`` inputs).
        settings: the request limits.
        slots: held while frames are decoded and embedded (a semaphore bounding how
            many requests do that at once); ``None``: no bound.

    Raises:
        TrackletNotFoundError: unknown id (404).
        EncoderMismatchError: the stored tracklet was embedded by another encoder version (409).
        RequestValidationError: wrong embedding size or too many frames (422).
        InvalidInputError: undecodable frames (422).
        IndexNotReadyError: a ``tracklet_id`` input while the store is not loaded (503).
    """
    if value.tracklet_id is not None:
        if store is None:
            raise IndexNotReadyError("the database is not loaded; see GET /healthz")
        record = store.get_tracklet(value.tracklet_id)
        if record.encoder_version != encoder.version:
            raise EncoderMismatchError(
                f"tracklet {record.id} was embedded by encoder {record.encoder_version!r} but the "
                f"service runs {encoder.version!r}; re-index it with `polypindex index`"
            )
        return EmbeddedInput(_normalized(record.embedding, where), record)
    if value.embedding is not None:
        if len(value.embedding) != encoder.dim:
            raise field_error(
                (*where.split("."), "embedding"),
                f"embedding has {len(value.embedding)} values; the model "
                f"{encoder.version!r} expects {encoder.dim}",
            )
        return EmbeddedInput(_normalized(np.asarray(value.embedding, dtype=np.float32), where))
    assert value.frames is not None
    with slots if slots is not None else nullcontext():
        started = time.perf_counter()
        images, boxes = decode_frames(value.frames, where, settings, _crop_config(encoder))
        vector = np.asarray(encoder.embed_tracklet(images, boxes), dtype=np.float32).reshape(-1)
        del images
        metrics.observe_embedding(time.perf_counter() - started)
    return EmbeddedInput(_normalized(vector, where))


@dataclass(frozen=True)
class QueryEmbedder:
    """:func:`embed_input` bound to what one request embeds with: the encoder, the store
    (for inputs given by id; ``None`` when not loaded), the limits and the slots."""

    encoder: Encoder
    store: Store | None
    settings: Settings
    slots: AbstractContextManager[object] | None = None

    def __call__(self, value: TrackletInput, where: str) -> EmbeddedInput:
        """The embedding of ``value`` (see :func:`embed_input`); ``where`` names it in errors."""
        return embed_input(value, where, self.encoder, self.store, self.settings, self.slots)


def _normalized(vector: np.ndarray, where: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidInputError(f"{where}: the embedding is zero or not finite")
    return v / np.float32(norm)


# -- writes ------------------------------------------------------------------------------


def submit_job(runner: JobRunner, kind: str, params: dict[str, Any]) -> JobRecord:
    """Validate and queue an indexing job; a refused request writes nothing.

    Raises:
        PathNotAllowedError: an input path outside the data roots (403).
        InvalidInputError: unknown kind or fields, a missing path (422).
    """
    return runner.submit(kind, params)


def delete_procedure(
    uid: str, store: Store, upkeep: IndexUpkeep | None, settings: Settings
) -> list[int]:
    """Delete a procedure's rows, then its vectors from the running index (tombstones:
    no search returns them from now on; compaction and the snapshot follow in the
    upkeep thread, other generations' snapshots are caught up when opened).

    Returns:
        The ids of the tracklets removed.

    Raises:
        ProcedureNotFoundError: no procedure has this UID (404; nothing changed).
    """
    removed = store.delete_procedure(uid)
    if upkeep is not None:
        upkeep.deleted(removed)
    shutil.rmtree(thumbnail_dir(settings.index_dir, uid), ignore_errors=True)
    return removed
