"""What the service does for a request with the loaded objects: search, query embedding,
predictions and deletes.

With :mod:`service.resources` (which loads those objects and keeps the index
current), this is the only part of ``service/`` that touches ``indexer``
(``Store``, ``VectorIndex``, ``JobRunner``, ``delete_procedure``), so a change
there is adapted here (``service.errors`` also names the indexer's exceptions in
its table). Routers receive the loaded objects through :mod:`service.deps` and
call these functions.
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

from polypindex.indexer import hits, pipeline
from polypindex.indexer.embed import thumbnail_dir
from polypindex.indexer.hits import HitRecord
from polypindex.indexer.jobs import JobRecord, JobRunner
from polypindex.indexer.store import Store
from polypindex.indexer.tables import PredictionRow, TrackletRecord
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import (
    EncoderMismatchError,
    ImageReadError,
    IndexNotReadyError,
    InvalidInputError,
    ProbeNotInstalledError,
    ProcedureNotFoundError,
)
from polypindex.model.data.preprocess import decode_image
from polypindex.model.scoring.probe import Probe
from polypindex.service import metrics
from polypindex.service.errors import field_error
from polypindex.service.limits import check_image_b64_lengths
from polypindex.service.resources import Encoder, empty_index_problem
from polypindex.service.schemas import FrameInput, TrackletInput
from polypindex.service.settings import Settings
from polypindex.service.upkeep import IndexUpkeep

__all__ = [
    "EmbeddedInput",
    "QueryEmbedder",
    "decode_frames",
    "delete_procedure",
    "embed_input",
    "search",
    "search_batch",
    "submit_job",
]


# -- predictions and reads --------------------------------------------------------------


def require_probe(probes: dict[str, Probe], problems: dict[str, str], task: str) -> Probe:
    """The installed probe of ``task``; ProbeNotInstalledError (503) saying why otherwise."""
    probe = probes.get(task)
    if probe is None:
        raise ProbeNotInstalledError(problems.get(task, f"no {task} probe installed"))
    return probe


def predict(probe: Probe, vector: np.ndarray) -> PredictionRow:
    """One probe's prediction for one tracklet embedding (the indexer's rule)."""
    (row,) = pipeline.predict([probe], vector)
    return row


def predictions_for(store: Store, ids: Sequence[int]) -> dict[int, dict[str, PredictionRow]]:
    return store.predictions_for(ids)


def hit_records(store: Store, ids: Sequence[int]) -> dict[int, HitRecord]:
    """What the hits show (row facts and predictions), in one query."""
    return hits.hit_records(store.engine, ids)


def tracklet_ids_predicted(store: Store, task: str, label: str, encoder_version: str) -> set[int]:
    return store.tracklet_ids_with_prediction(task, label, encoder_version)


def require_searchable(index: VectorIndex, encoder: Encoder) -> None:
    """Raise IndexNotReadyError when the index is empty."""
    problem = empty_index_problem(index, encoder)
    if problem:
        raise IndexNotReadyError(problem)


def get_tracklet(store: Store, tracklet_id: int) -> TrackletRecord:
    """The stored tracklet; TrackletNotFoundError (404) when unknown."""
    return store.get_tracklet(tracklet_id)


def get_tracklets(store: Store, ids: Sequence[int]) -> dict[int, TrackletRecord]:
    return store.get_tracklets(ids)


def procedure_tracklet_ids(store: Store, uid: str) -> list[int]:
    return store.tracklet_ids_for_procedure(uid)


def tracklet_ids_of_procedures(store: Store, uids: Sequence[str]) -> set[int]:
    """The tracklet ids of these procedures; ProcedureNotFoundError (404) names unknown UIDs."""
    ids: set[int] = set()
    empty = []
    for uid in dict.fromkeys(uids):
        found = store.tracklet_ids_for_procedure(uid)
        if not found:
            empty.append(uid)
        ids.update(found)
    if empty:
        known = {p.uid for p in store.list_procedures()}
        unknown = [uid for uid in empty if uid not in known]
        if unknown:
            shown = ", ".join(map(repr, unknown[:10]))  # not all of up to 1000 echoed back
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ProcedureNotFoundError(f"no procedure with uid {shown}{more}")
    return ids


def search(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    exclude: set[int],
    allowed: set[int] | None = None,
) -> list[tuple[int, float]]:
    """Top-``k`` ``(id, cosine)`` of one query, best first (see :func:`search_batch`)."""
    return search_batch(index, np.asarray(query)[None, :], k, [exclude], allowed=allowed)[0]


def search_batch(
    index: VectorIndex,
    queries: np.ndarray,
    k: int,
    excludes: Sequence[set[int]],
    *,
    shared_exclude: set[int] | None = None,
    allowed: set[int] | None = None,
) -> list[list[tuple[int, float]]]:
    """Top-``k`` ``(id, cosine)`` of each query, best first; the queries are searched
    together in one FAISS call.

    Args:
        index: the loaded index.
        queries: float32 ``(Q, D)``.
        k: results wanted per query.
        excludes: per query, ids it must not return (its own tracklet, its procedure).
        shared_exclude: ids no query returns (a FAISS id selector).
        allowed: when given, only these ids are returned (a FAISS id selector; as many
            as ``k`` of them when that many are indexed: no widening, no re-search).
    """
    if len(index) == 0 or len(queries) == 0:
        return [[] for _ in range(len(queries))]
    extra = max((len(e) for e in excludes), default=0)
    common = set(shared_exclude or ())
    if len(excludes) == 1:  # one query: its exclusions go into the selector too
        common |= excludes[0]
        extra = 0
    started = time.perf_counter()
    found = index.search(queries, k + extra, exclude_ids=common or None, allowed_ids=allowed)
    metrics.observe_index_search(time.perf_counter() - started)
    return [
        [(i, s) for i, s in hits if i not in own][:k]
        for hits, own in zip(found, excludes, strict=True)
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
    frames: Sequence[FrameInput], where: str, settings: Settings
) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode a query's frames: RGB uint8 ``(H, W, 3)`` images and ``(s, 4)`` float boxes.

    Raises:
        RequestValidationError: more frames than ``settings.max_frames_per_request``.
        InvalidInputError / ImageReadError: invalid base64 or an undecodable image; the
            message names the frame (``body.query.frames.3.image_b64: ...``).
    """
    if len(frames) > settings.max_frames_per_request:
        raise field_error(
            (*where.split("."), "frames"),
            f"{len(frames)} frames, at most {settings.max_frames_per_request} per request",
        )
    check_image_b64_lengths(frames, where, settings.max_image_bytes)  # the schema's maxLength
    images = []
    for i, frame in enumerate(frames):
        path = f"{where}.frames.{i}.image_b64"
        data = _b64_bytes(frame.image_b64, path, settings.max_image_bytes)
        try:  # the pixel limit is read from the header, before decoding
            images.append(decode_image(data, max_pixels=settings.max_image_pixels))
        except ImageReadError as exc:  # ImageTooLargeError stays one (413)
            raise type(exc)(f"{path}: {exc}") from exc
    boxes = np.asarray([f.bbox for f in frames], dtype=np.float64).reshape(-1, 4)
    return images, boxes


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
        images, boxes = decode_frames(value.frames, where, settings)
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
