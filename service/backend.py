"""Everything the service does with the model runtime and the read side of the indexer.

This is the only module of ``service/`` that touches ``indexer`` (``Store``,
``VectorIndex``, ``JobRunner``, ``delete_procedure``), so a change there is adapted
here (``service.errors`` also names the indexer's exceptions in its table). Routers receive the loaded
objects through :mod:`service.deps` and call these functions.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from polypindex.indexer import pipeline
from polypindex.indexer.jobs import JobRecord, JobRunner
from polypindex.indexer.store import PredictionRow, Store, TrackletRecord
from polypindex.indexer.vector_index import VectorIndex
from polypindex.model.errors import (
    EncoderMismatchError,
    ImageReadError,
    IndexNotReadyError,
    InvalidInputError,
    PolypIndexError,
    ProbeNotInstalledError,
    ProcedureNotFoundError,
)
from polypindex.model.preprocess import decode_image
from polypindex.model.probe import TASKS, Probe, load_probe, probe_path
from polypindex.service.errors import field_error
from polypindex.service.schemas import FrameInput, TrackletInput
from polypindex.service.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "Encoder",
    "IndexRefresher",
    "JobRecord",
    "JobRunner",
    "PredictionRow",
    "Probe",
    "Resources",
    "Store",
    "TrackletRecord",
    "VectorIndex",
    "decode_frames",
    "delete_procedure",
    "embed_input",
    "load_resources",
    "search",
    "start_job_runner",
    "submit_job",
]

HOW_TO_BUILD_MODEL = (
    "build the demo model with `polypindex demo`, or point POLYPINDEX_MODEL_PATH "
    "(`polypindex serve --model`) at an exported encoder.onnx"
)
HOW_TO_BUILD_INDEX = "index procedures with `polypindex index` (or run `polypindex demo`)"


def how_to_train_probe(task: str, settings: Settings) -> str:
    return (
        f"train it with `polypindex probe train {task} --data DATA --model {settings.model_path}` "
        f"(it is read from {probe_path(settings.probes_folder, task)}), then restart the service"
    )


class Encoder(Protocol):
    """What the service needs of an encoder (``model.runtime.OnnxEncoder`` in production)."""

    version: str
    dim: int
    reid_threshold: float

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """RGB uint8 frames + ``(s, 4)`` boxes → float32 ``(D,)``, L2-normalised."""
        ...


# FAISS indexes are not safe to search while they are being modified: searches and the
# refresher's sync take this lock (one loaded index per process).
INDEX_LOCK = threading.Lock()


class IndexRefresher:
    """Keeps the loaded index equal to the store while the service runs.

    Procedures indexed or deleted by the command line (or another process) after
    start-up show up in the store's highest tracklet id or in its count of this
    encoder version's tracklets. At most every ``interval_s`` seconds one request
    compares both with what was seen last and, when either changed, syncs the
    index with the store (:meth:`VectorIndex.sync_with_store`). A failure is
    logged and the loaded index keeps serving.

    Args:
        index: the loaded index.
        store: its source of truth.
        interval_s: least time between two checks (``0``: every call).
        seen: the store's :meth:`fingerprint` taken *before* the index was loaded
            (so a change during loading is caught); default: taken now.
    """

    def __init__(
        self,
        index: VectorIndex,
        store: Store,
        interval_s: float,
        seen: tuple[int, int] | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last_check = time.monotonic()
        self._seen = seen if seen is not None else self.fingerprint(store, index.encoder_version)

    @staticmethod
    def fingerprint(store: Store, encoder_version: str) -> tuple[int, int]:
        """``(highest tracklet id, tracklets of encoder_version)``: changes with any
        insert (ids are never reused) or delete."""
        return store.max_tracklet_id(), store.count_tracklets(encoder_version)

    def maybe_refresh(self) -> bool:
        """Sync the index if the check is due and the store changed; ``True`` if it synced."""
        if time.monotonic() - self._last_check < self.interval_s:
            return False
        if not self._lock.acquire(blocking=False):  # another request is checking right now
            return False
        try:
            self._last_check = time.monotonic()
            seen = self.fingerprint(self.store, self.index.encoder_version)
            if seen == self._seen:
                return False
            with INDEX_LOCK:
                added, removed = self.index.sync_with_store(self.store)
            self._seen = seen
            logger.info("index caught up with the store: %d added, %d removed", added, removed)
            return True
        except Exception:
            logger.exception("cannot sync the index with the store; serving the loaded index")
            return False
        finally:
            self._lock.release()


@dataclass
class Resources:
    """What the lifespan loaded; ``None`` where loading failed, with the reason in ``problems``."""

    encoder: Encoder | None = None
    store: Store | None = None
    index: VectorIndex | None = None
    refresher: IndexRefresher | None = None
    jobs: JobRunner | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    probe_problems: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    jobs_problem: str = "indexing jobs are not running"

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()  # after the current job; a job cut short is recovered at the next start
            self.jobs = None
        if self.store is not None:
            self.store.close()


def start_job_runner(res: Resources, settings: Settings) -> None:
    """Create, recover and start the indexing job runner in ``res.jobs``; never raises.

    It needs the encoder (one that can embed tracklets for indexing) and the store,
    and ``settings.run_jobs``; otherwise ``res.jobs`` stays ``None`` and
    ``res.jobs_problem`` says why (``POST /procedures`` and ``/jobs`` answer 503).
    Jobs a dead process left ``running`` go back to the queue first.
    """
    if not settings.run_jobs:
        res.jobs_problem = "indexing jobs are disabled in this service (POLYPINDEX_RUN_JOBS=false)"
        return
    if res.encoder is None or res.store is None:
        missing = "; ".join(res.problems[k] for k in ("model", "store") if k in res.problems)
        res.jobs_problem = f"indexing jobs need the encoder model and the database: {missing}"
        return
    if not hasattr(res.encoder, "embed_sequences"):
        res.jobs_problem = (
            f"the encoder {res.encoder.version!r} cannot embed tracklets for indexing "
            "(no embed_sequences); load an exported encoder.onnx"
        )
        return
    try:
        runner = JobRunner(
            res.store,
            settings.index_dir,
            res.encoder,  # type: ignore[arg-type]  # checked above: has embed_sequences
            settings.data_roots,
            probes=list(res.probes.values()),
        )
        recovered = runner.recover()
        if recovered:
            logger.info(
                "%d indexing job(s) left running by a dead process are queued again", recovered
            )
        runner.start()
    except Exception as exc:
        logger.exception("cannot start the indexing job runner")
        res.jobs_problem = f"indexing jobs not running: {type(exc).__name__}: {exc}"
        return
    res.jobs = runner


def load_resources(settings: Settings, encoder: Encoder | None = None) -> Resources:
    """Load the encoder, open the store and the index; never raises.

    Args:
        settings: where the artefacts are.
        encoder: an already built encoder to use instead of loading ``settings.model_path``.

    Returns:
        The loaded objects; each missing one has a message in ``problems``
        (keys ``"model"``, ``"store"``, ``"index"``) saying what is missing and how to build it.
    """
    res = Resources(encoder=encoder)
    if res.encoder is None:
        from polypindex.model.runtime import OnnxEncoder

        try:
            res.encoder = OnnxEncoder(settings.model_path)
        except Exception as exc:  # the app must start anyway; healthz and 503s say why
            res.problems["model"] = f"encoder model not loaded: {exc}; {HOW_TO_BUILD_MODEL}"
            if isinstance(exc, PolypIndexError):
                logger.warning("%s", res.problems["model"])
            else:
                logger.exception("%s", res.problems["model"])
    try:
        res.store = Store(settings.database_url)
        res.store.count_tracklets()
    except Exception as exc:
        logger.exception("cannot open the database")
        if res.store is not None:
            res.store.close()
            res.store = None
        res.problems["store"] = (
            f"database not available: {type(exc).__name__}: {exc}; check POLYPINDEX_DATABASE_URL, "
            f"then {HOW_TO_BUILD_INDEX}"
        )
    if res.encoder is not None:
        res.probes, res.probe_problems = load_probes(settings, res.encoder.version)
    if res.encoder is None or res.store is None:
        res.problems["index"] = (
            "vector index not loaded: it needs the encoder model and the database"
        )
        return res
    try:
        seen = IndexRefresher.fingerprint(res.store, res.encoder.version)
        res.index = VectorIndex.open_or_rebuild(
            settings.index_dir, res.store, res.encoder.version, res.encoder.dim
        )
        res.refresher = IndexRefresher(
            res.index, res.store, settings.index_refresh_seconds, seen=seen
        )
    except Exception as exc:
        logger.exception("cannot open the vector index")
        res.problems["index"] = (
            f"vector index not loaded from {settings.index_dir}: {exc}; rebuild it: {HOW_TO_BUILD_INDEX}"
        )
    return res


def load_probes(
    settings: Settings, encoder_version: str
) -> tuple[dict[str, Probe], dict[str, str]]:
    """The installed probes of this encoder, and for each task without one, why; never raises."""
    probes: dict[str, Probe] = {}
    problems: dict[str, str] = {}
    for task in TASKS:
        path = probe_path(settings.probes_folder, task)
        if not path.is_file():
            problems[task] = f"no {task} probe installed; {how_to_train_probe(task, settings)}"
            continue
        try:
            probes[task] = load_probe(path, encoder_version)
        except PolypIndexError as exc:
            problems[task] = f"{task} probe not loaded: {exc}; {how_to_train_probe(task, settings)}"
            logger.warning("%s", problems[task])
    return probes, problems


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


def tracklet_ids_predicted(store: Store, task: str, label: str, encoder_version: str) -> set[int]:
    return store.tracklet_ids_with_prediction(task, label, encoder_version)


# -- reads -------------------------------------------------------------------------------


def index_size(index: VectorIndex) -> int:
    return len(index)


def store_ok(store: Store) -> bool:
    """Whether the database answers a query now."""
    try:
        store.count_tracklets()
    except Exception:
        logger.exception("the database does not answer")
        return False
    return True


def empty_index_problem(index: VectorIndex, encoder: Encoder) -> str | None:
    if len(index) == 0:
        return f"the index holds no tracklets of encoder {encoder.version!r}; {HOW_TO_BUILD_INDEX}"
    return None


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
            raise ProcedureNotFoundError(f"no procedure with uid {', '.join(map(repr, unknown))}")
    return ids


def search(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    exclude: set[int],
    allowed: set[int] | None = None,
) -> list[tuple[int, float]]:
    """Top-``k`` ``(id, cosine)`` of one query, best first.

    Args:
        index: the loaded index.
        query: float32 ``(D,)``.
        k: results wanted.
        exclude: ids never returned.
        allowed: when given, only these ids are returned; the search widens until
            ``k`` of them are found or the whole index was ranked, so filtering
            never returns fewer results than available.
    """
    n = len(index)
    if n == 0:
        return []
    want = k
    if allowed is not None:
        allowed = allowed - exclude
        want = min(k, len(allowed))
        if want == 0:
            return []
    fetch = min(n, want if allowed is None else max(4 * want, want + 64))
    while True:
        with INDEX_LOCK:
            hits = index.search(query, fetch, exclude_ids=exclude or None)[0]
        if allowed is not None:
            hits = [(i, s) for i, s in hits if i in allowed]
        if len(hits) >= want or fetch >= n:
            return hits[:want]
        fetch = min(n, fetch * 4)


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
    images = []
    for i, frame in enumerate(frames):
        path = f"{where}.frames.{i}.image_b64"
        data = _b64_bytes(frame.image_b64, path, settings.max_image_bytes)
        try:
            images.append(decode_image(data))
        except ImageReadError as exc:
            raise ImageReadError(f"{path}: {exc}") from exc
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
        images, boxes = decode_frames(value.frames, where, settings)
        vector = np.asarray(encoder.embed_tracklet(images, boxes), dtype=np.float32).reshape(-1)
        del images
    return EmbeddedInput(_normalized(vector, where))


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
    uid: str, store: Store, index: VectorIndex | None, settings: Settings
) -> list[int]:
    """Delete a procedure's rows and its vectors (saved snapshots and the running index).

    Returns:
        The ids of the tracklets removed.

    Raises:
        ProcedureNotFoundError: no procedure has this UID (404; nothing changed).
    """
    removed = pipeline.delete_procedure(uid, store, settings.index_dir)
    if index is not None:
        with INDEX_LOCK:
            index.sync_with_store(store)
    return removed
