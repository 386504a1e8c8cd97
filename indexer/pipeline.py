"""Indexing pipeline: procedures → tracklets → crops → encoder → store + FAISS (SPEC §8).

Inputs (:mod:`indexer.sources`): a COCO split, a video + detections CSV, a
frames folder + detections CSV. Frames are streamed in frame order and each
tracklet is embedded as soon as its last frame is cropped, so memory holds the
crops of the tracklets still open, never a whole video.

Per procedure, the SQL transaction commits first and the index is updated
after it; the snapshot is saved every ``snapshot_every_s`` seconds and at the
end, and the index catches up from the store when it is opened, so a crash
anywhere loses nothing and duplicates nothing. Re-indexing a procedure replaces
it atomically (same UID twice = same rows); a batch is resumable because
procedures already stored with this encoder are skipped.

The pipeline depends only on the :class:`Embedder` protocol (``model.runtime.OnnxEncoder``
satisfies it), never on torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm.auto import tqdm

from polypindex.indexer.sources import ProcedureSource, coco_sources, procedure_uid
from polypindex.indexer.store import PredictionRow, Store, TrackletRow
from polypindex.indexer.vector_index import (
    IndexPolicy,
    VectorIndex,
    generation_dir,
    list_generations,
)
from polypindex.model.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.errors import (
    ConfigError,
    EncoderMismatchError,
    InvalidInputError,
    NotFoundError,
    PolypIndexError,
)
from polypindex.model.preprocess import crop_frame, normalize
from polypindex.model.probe import TASKS, Probe, load_probe, probe_path
from polypindex.model.tracklets import fragment_indices

logger = logging.getLogger(__name__)

THUMBNAIL_DIR = "thumbnails"
# Tracklets normalised and sent to the encoder at a time (bounds float32 memory).
_EMBED_CHUNK = 32


class Embedder(Protocol):
    """What the pipeline needs from an encoder (``model.runtime.OnnxEncoder`` has it)."""

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def preprocess(self) -> PreprocessConfig: ...

    @property
    def fragment(self) -> FragmentConfig: ...

    @property
    def reid_threshold(self) -> float: ...

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """``seqs[i]``: float32 ``(s_i, 3, H, W)`` → float32 ``(N, D)``, L2-normalised."""
        ...


@dataclass(frozen=True)
class IndexReport:
    """What :func:`index_dataset` did.

    Attributes:
        procedures_indexed: procedures embedded and written.
        procedures_skipped: procedures already stored with this encoder version.
        tracklets: tracklets written.
        frames: frames fed to the encoder (after subsampling).
        images_decoded: image files decoded (each at most once per procedure).
        seconds: wall-clock time.
        index_size: vectors in the index at the end.
        encoder_version: the encoder used.
        indexed_uids: UIDs of the procedures written.
    """

    procedures_indexed: int
    procedures_skipped: int
    tracklets: int
    frames: int
    images_decoded: int
    seconds: float
    index_size: int
    encoder_version: str
    indexed_uids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tracklets_per_s(self) -> float:
        return self.tracklets / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["indexed_uids"] = list(self.indexed_uids)
        out["tracklets_per_s"] = round(self.tracklets_per_s, 3)
        out["frames_per_s"] = round(self.frames_per_s, 3)
        return out


@dataclass(frozen=True)
class Progress:
    """Where a batch stands (given to ``on_progress`` after each procedure).

    Attributes:
        procedures_done: procedures indexed or skipped so far.
        procedures_total: procedures in the batch (``None`` if unknown).
        current_uid: the procedure just finished.
        tracklets: tracklets written so far.
        frames: frames embedded so far.
        elapsed_s: seconds since the batch started.
        tracklets_per_s: throughput so far.
        eta_s: estimated seconds left (``None`` until one procedure was embedded).
    """

    procedures_done: int
    procedures_total: int | None
    current_uid: str | None
    tracklets: int
    frames: int
    elapsed_s: float
    tracklets_per_s: float
    eta_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = [
    "Embedder",
    "IndexReport",
    "Progress",
    "delete_procedure",
    "index_dataset",
    "index_sources",
    "procedure_uid",
    "summarize_boxes",
]


def summarize_boxes(
    frame_ids: np.ndarray, boxes: np.ndarray, sampled: np.ndarray | None = None
) -> dict[str, Any]:
    """The boxes summary stored with a tracklet.

    Args:
        frame_ids: (n,) frame ids of the tracklet.
        boxes: (n, 4) xywh boxes.
        sampled: positions (into the tracklet) of the frames that were embedded.

    Returns:
        ``{"first", "last", "mean"}`` boxes (xywh), ``"frame_ids"`` (all) and
        ``"sampled_frame_ids"`` (embedded ones).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    f = np.asarray(frame_ids, dtype=np.int64)
    return {
        "first": [round(float(v), 2) for v in b[0]],
        "last": [round(float(v), 2) for v in b[-1]],
        "mean": [round(float(v), 2) for v in b.mean(axis=0)],
        "frame_ids": f.tolist(),
        "sampled_frame_ids": f[sampled].tolist() if sampled is not None else [],
    }


def _safe_name(text: str) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')[:80]}-{digest}"


def _write_thumbnail(path: Path, crop_rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(crop_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    if not ok:
        raise PolypIndexError(f"cannot encode thumbnail {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.tobytes())
    os.replace(tmp, path)


@dataclass
class _ProcedureEmbedding:
    rows: list[TrackletRow]
    embeddings: np.ndarray  # (N, D) float32
    frames: int
    images_decoded: int


def _selected_frames(n_frames: int, encoder: Embedder) -> np.ndarray:
    pieces = fragment_indices(n_frames, encoder.fragment)
    if len(pieces) != 1 or len(pieces[0]) == 0:
        raise ConfigError(
            f"indexing embeds each tracklet whole: the encoder's fragment config must have "
            f"fragment_length=-1, got {encoder.fragment}"
        )
    return pieces[0]


def _embed_procedure(
    procedure: ProcedureSource,
    encoder: Embedder,
    batch_size: int,
    index_dir: Path | None,
) -> _ProcedureEmbedding:
    """Stream, crop and embed every tracklet of one procedure (nothing is written to the store).

    Frames come in increasing order from ``procedure.frames``; a tracklet is
    embedded (in chunks of ``_EMBED_CHUNK``) as soon as its last needed frame
    is cropped, and its crops are then dropped. Thumbnails are written only
    once every tracklet is embedded.
    """
    uid, tracklets = procedure.uid, procedure.tracklets
    config = encoder.preprocess
    size, dim = config.im_size, encoder.dim
    selections: list[np.ndarray] = []
    remaining = np.zeros(len(tracklets), dtype=np.int64)
    # frame id -> [(tracklet index, slot in its crop stack, box)]: each frame is decoded once.
    needs: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for ti, tracklet in enumerate(tracklets):
        selected = _selected_frames(len(tracklet), encoder)
        selections.append(selected)
        remaining[ti] = len(selected)
        for slot, pos in enumerate(selected):
            needs.setdefault(int(tracklet.frame_ids[int(pos)]), []).append(
                (ti, slot, tracklet.boxes[int(pos)])
            )
    crops: list[np.ndarray | None] = [None] * len(tracklets)
    middle: list[np.ndarray | None] = [None] * len(tracklets)
    embeddings = np.empty((len(tracklets), dim), dtype=np.float32)
    ready: list[int] = []

    def flush() -> None:
        seqs = [normalize(crops[ti], config) for ti in ready]  # type: ignore[arg-type]
        out = np.asarray(encoder.embed_sequences(seqs, batch_size=batch_size), dtype=np.float32)
        if out.shape != (len(ready), dim):
            raise EncoderMismatchError(
                f"encoder {encoder.version!r} returned shape {out.shape} for {len(ready)} "
                f"tracklets; expected ({len(ready)}, {dim})"
            )
        for row, ti in enumerate(ready):
            embeddings[ti] = out[row]
            stack = crops[ti]
            assert stack is not None
            middle[ti] = stack[len(stack) // 2].copy()
            crops[ti] = None
        ready.clear()

    decoded = 0
    for frame_id, image in procedure.frames(sorted(needs)):
        decoded += 1
        for ti, slot, box in needs.get(int(frame_id), ()):
            if crops[ti] is None:
                crops[ti] = np.empty((len(selections[ti]), size, size, 3), dtype=np.uint8)
            crops[ti][slot] = crop_frame(image, box, config)  # type: ignore[index]
            remaining[ti] -= 1
            if remaining[ti] == 0:
                ready.append(ti)
        if len(ready) >= _EMBED_CHUNK:
            flush()
    if ready:
        flush()
    if np.any(remaining > 0):
        ti = int(np.flatnonzero(remaining > 0)[0])
        raise InvalidInputError(
            f"procedure {uid!r} ({procedure.source}): frames of tracklet {tracklets[ti].key} "
            f"were never read"
        )
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.isfinite(embeddings)) or np.any(norms <= 0):
        raise PolypIndexError(
            f"procedure {uid!r}: the encoder returned NaN, infinite or zero embeddings"
        )

    rows: list[TrackletRow] = []
    for ti, tracklet in enumerate(tracklets):
        thumbnail: str | None = None
        if index_dir is not None and middle[ti] is not None:
            rel = Path(THUMBNAIL_DIR) / _safe_name(uid) / f"{_safe_name(tracklet.key)}.jpg"
            _write_thumbnail(index_dir / rel, middle[ti])  # type: ignore[arg-type]
            thumbnail = rel.as_posix()
        size_mm = tracklet.metadata.get("size")
        histology = tracklet.metadata.get("histology")
        rows.append(
            TrackletRow(
                key=tracklet.key,
                start_frame=tracklet.start_frame,
                end_frame=tracklet.end_frame,
                n_frames=len(tracklet),
                embedding=embeddings[ti],
                boxes=summarize_boxes(tracklet.frame_ids, tracklet.boxes, selections[ti]),
                identity_label=tracklet.identity_id,
                thumbnail_path=thumbnail,
                size_mm=float(size_mm) if isinstance(size_mm, int | float) else None,
                histology=str(histology) if histology is not None else None,
            )
        )
    return _ProcedureEmbedding(
        rows=rows,
        embeddings=embeddings,
        frames=int(sum(len(s) for s in selections)),
        images_decoded=decoded,
    )


def index_sources(
    procedures: Iterable[ProcedureSource],
    store: Store,
    index_dir: str | Path,
    encoder: Embedder,
    *,
    force: bool = False,
    progress: bool = True,
    total: int | None = None,
    batch_size: int = 16,
    thumbnails: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    snapshot_every_s: float = 30.0,
    policy: IndexPolicy | None = None,
    description: str = "indexing",
    probes: Sequence[Probe] = (),
) -> IndexReport:
    """Index a batch of procedures into the store and the index generation of ``encoder``.

    For each procedure: skip it if it is already stored with this encoder version
    (unless ``force``), else stream, crop and embed its tracklets, commit its rows
    in one transaction (replacing an older version of it), then update the index.
    The snapshot is saved at most every ``snapshot_every_s`` seconds and at the end.

    Args:
        procedures: the procedures (an iterable: sources may be built lazily).
        store: the SQL store.
        index_dir: index root (generations and ``thumbnails/`` live under it).
        encoder: the embedder (``fragment.fragment_length`` must be -1).
        force: re-embed and replace procedures already stored.
        progress: show a tqdm progress bar (tracklets/s, ETA).
        total: number of procedures, for the ETA when ``procedures`` has no ``len``.
        batch_size: tracklets per encoder batch.
        thumbnails: write the middle frame's crop of each tracklet as a JPEG.
        on_progress: called after each procedure with a :class:`Progress`.
        snapshot_every_s: least seconds between two index snapshots (0: after each procedure).
        policy: index kind threshold / HNSW parameters / device.
        description: the progress bar's label.
        probes: size / histology probes of this encoder; each tracklet's predictions
            are stored with its row (same transaction).

    Returns:
        The :class:`IndexReport`.
    """
    started = time.perf_counter()
    if encoder.fragment.fragment_length != -1:
        raise ConfigError(
            f"indexing embeds each tracklet whole: the encoder's fragment config must have "
            f"fragment_length=-1, got {encoder.fragment}"
        )
    check_probes(probes, encoder.version)
    if total is None and isinstance(procedures, Sequence):
        total = len(procedures)
    out_dir = Path(index_dir)
    index = VectorIndex.open_or_rebuild(
        out_dir,
        store,
        encoder.version,
        encoder.dim,
        preprocess=encoder.preprocess,
        fragment=encoder.fragment,
        save=True,
        policy=policy,
    )
    indexed: list[str] = []
    skipped = n_tracklets = n_frames = n_images = 0
    embed_seconds = 0.0
    dirty = False
    last_save = time.monotonic()
    bar = tqdm(total=total, unit="procedure", desc=description, disable=not progress)
    try:
        for procedure in procedures:
            uid = procedure.uid
            bar.set_description(f"{description} {uid}")
            if not force and store.has_procedure(uid, encoder.version):
                skipped += 1
            else:
                t0 = time.perf_counter()
                result = _embed_procedure(
                    procedure, encoder, batch_size, out_dir if thumbnails else None
                )
                if probes:
                    result.rows[:] = [
                        replace(row, predictions=predict(probes, row.embedding))
                        for row in result.rows
                    ]
                old_ids = store.tracklet_ids_for_procedure(uid)
                # 1) the source of truth, in one transaction ...
                new_ids = store.replace_procedure(
                    uid, procedure.dataset_id, procedure.source, encoder.version, result.rows
                )
                # 2) ... then the derived index (a crash here is repaired by the catch-up on open).
                index.remove(old_ids)
                index.add(
                    np.asarray(new_ids, dtype=np.int64),
                    result.embeddings,
                    encoder_version=encoder.version,
                )
                dirty = True
                embed_seconds += time.perf_counter() - t0
                indexed.append(uid)
                n_tracklets += len(new_ids)
                n_frames += result.frames
                n_images += result.images_decoded
                if time.monotonic() - last_save >= snapshot_every_s:
                    index.save()
                    dirty, last_save = False, time.monotonic()
            done = len(indexed) + skipped
            elapsed = max(time.perf_counter() - started, 1e-9)
            eta = None
            if total is not None and indexed:
                eta = embed_seconds / len(indexed) * max(total - done, 0)
            state = Progress(
                procedures_done=done,
                procedures_total=total,
                current_uid=uid,
                tracklets=n_tracklets,
                frames=n_frames,
                elapsed_s=elapsed,
                tracklets_per_s=n_tracklets / elapsed,
                eta_s=eta,
            )
            bar.set_postfix(
                tracklets=n_tracklets,
                rate=f"{state.tracklets_per_s:.1f} tracklets/s",
                eta="?" if eta is None else f"{eta:.0f}s",
            )
            bar.update(1)
            if on_progress is not None:
                on_progress(state)
    finally:
        bar.close()
        if dirty:
            index.save()
    report = IndexReport(
        procedures_indexed=len(indexed),
        procedures_skipped=skipped,
        tracklets=n_tracklets,
        frames=n_frames,
        images_decoded=n_images,
        seconds=time.perf_counter() - started,
        index_size=len(index),
        encoder_version=encoder.version,
        indexed_uids=tuple(indexed),
    )
    logger.info("%s", report)
    return report


def check_probes(probes: Sequence[Probe], encoder_version: str) -> None:
    """Refuse probes of another encoder, probes trained on fragments shorter than the
    whole tracklet (indexing predicts from the tracklet embedding), or two of one task."""
    tasks = [p.task for p in probes]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"one probe per task, got tasks {tasks}")
    for probe in probes:
        probe.check_encoder(encoder_version)
        training = probe.metadata.get("training") or {}
        length = (training.get("fragment") or {}).get("fragment_length", -1)
        if length != -1:
            raise ConfigError(
                f"{probe.version} was trained on fragments of {length} frames, but predictions "
                f"are made from whole-tracklet embeddings; retrain it without --fragment-length"
            )


def predict(probes: Sequence[Probe], embedding: np.ndarray) -> tuple[PredictionRow, ...]:
    """The probes' predictions for one tracklet embedding.

    The probes read the encoder's own tracklet embedding (the encoder's fragment
    rule is the whole tracklet, as in :func:`index_sources`), so the stored
    embedding is the probe's one fragment.
    """
    out = []
    for probe in probes:
        p = probe.predict_tracklet(np.asarray(embedding, dtype=np.float32)[None, :])
        out.append(PredictionRow(probe.task, p.label, float(p.probability), probe.version))
    return tuple(out)


def installed_probes(folder: str | Path, encoder_version: str) -> list[Probe]:
    """The probes found in ``folder`` (``size.npz``, ``histology.npz``; absent ones are skipped).

    Raises:
        EncoderMismatchError: a probe there was trained on another encoder.
        ModelLoadError: a probe file there is unreadable.
    """
    return [
        load_probe(probe_path(folder, task), encoder_version)
        for task in TASKS
        if probe_path(folder, task).is_file()
    ]


def predict_stored(
    store: Store, encoder_version: str, probes: Sequence[Probe], progress: bool = True
) -> dict[str, int]:
    """(Re)compute and store every ``encoder_version`` tracklet's predictions; counts per task."""
    check_probes(probes, encoder_version)
    per_task: dict[str, dict[int, PredictionRow]] = {p.task: {} for p in probes}
    total = store.count_tracklets(encoder_version)
    with tqdm(total=total, unit="tracklet", desc="predicting", disable=not progress) as bar:
        for ids, vectors in store.iter_embeddings(encoder_version):
            for tid, vector in zip(ids.tolist(), vectors, strict=True):
                for row in predict(probes, vector):
                    per_task[row.task][int(tid)] = row
            bar.update(len(ids))
    return {task: store.replace_predictions(task, rows) for task, rows in per_task.items()}


def index_dataset(
    root: str | Path,
    split: str,
    store: Store,
    index_dir: str | Path,
    encoder: Embedder,
    tracklet_config: TrackletConfig | None = None,
    force: bool = False,
    progress: bool = True,
    procedure_uids: Collection[str] | None = None,
    *,
    batch_size: int = 16,
    thumbnails: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    snapshot_every_s: float = 30.0,
    policy: IndexPolicy | None = None,
    probes: Sequence[Probe] = (),
) -> IndexReport:
    """Index every procedure (video) of a COCO split (see :func:`index_sources`).

    Args:
        root: dataset folder (``ROOT/images``, ``ROOT/annotations/instances_{split}.json``).
        split: ``train``, ``val`` or ``test``.
        procedure_uids: only these procedures (UIDs as in :func:`procedure_uid`).
        tracklet_config: how annotations are cut into tracklets (default SPEC §3).

    Raises:
        InvalidAnnotationError: the annotation file or a record is malformed.
        ImageReadError: a frame cannot be read (nothing is written for its procedure).
        InvalidInputError: an unknown UID in ``procedure_uids``.
    """
    if encoder.fragment.fragment_length != -1:
        raise ConfigError(
            f"indexing embeds each tracklet whole: the encoder's fragment config must have "
            f"fragment_length=-1, got {encoder.fragment}"
        )
    sources = coco_sources(root, split, tracklet_config)
    if procedure_uids is not None:
        known = [s.uid for s in sources]
        unknown = sorted(set(procedure_uids) - set(known))
        if unknown:
            raise InvalidInputError(
                f"{root} ({split}): unknown procedure UID(s) {unknown}; known: {known}"
            )
        sources = [s for s in sources if s.uid in set(procedure_uids)]
    return index_sources(
        sources,
        store,
        index_dir,
        encoder,
        force=force,
        progress=progress,
        batch_size=batch_size,
        thumbnails=thumbnails,
        on_progress=on_progress,
        snapshot_every_s=snapshot_every_s,
        policy=policy,
        description=f"indexing {split}",
        probes=probes,
    )


def delete_procedure(uid: str, store: Store, index_dir: str | Path) -> list[int]:
    """Delete a procedure from the store, then its vectors from every index generation.

    The store commits first; each generation snapshot is then synced with the
    store and saved (a crash in between is repaired by the catch-up on open).

    Returns:
        The ids of the tracklets removed.

    Raises:
        ProcedureNotFoundError: no procedure has this UID (nothing is changed).
    """
    removed = store.delete_procedure(uid)
    for infos in list_generations(index_dir):
        version, dim = infos.get("encoder_version"), infos.get("dim")
        if not version or not isinstance(dim, int):
            continue
        # Opening syncs with the store, which drops the deleted ids.
        index = VectorIndex.open_or_rebuild(index_dir, store, str(version), dim)
        index.save()
    shutil.rmtree(Path(index_dir) / THUMBNAIL_DIR / _safe_name(uid), ignore_errors=True)
    return removed


def retire_generation(encoder_version: str, store: Store, index_dir: str | Path) -> int:
    """Retire an encoder's index generation: delete its procedures' rows (of that
    version only) from the store, then its index folder.

    Each procedure leaves in its own transaction; a crash half-way leaves some of
    them, and running this again finishes the job. Thumbnails stay while another
    generation still holds the procedure.

    Returns:
        The number of tracklets removed.

    Raises:
        NotFoundError: neither the store nor the index root knows this version.
    """
    procedures = store.list_procedures(encoder_version)
    folder = generation_dir(index_dir, encoder_version)
    if not procedures and not folder.exists():
        known = sorted(
            set(store.encoder_versions())
            | {
                str(g["encoder_version"])
                for g in list_generations(index_dir)
                if g.get("encoder_version")
            }
        )
        raise NotFoundError(f"no index generation of encoder {encoder_version!r}; known: {known}")
    removed = 0
    for procedure in procedures:
        removed += len(store.delete_procedure(procedure.uid, encoder_version))
    shutil.rmtree(folder, ignore_errors=True)
    for procedure in procedures:
        if not store.has_procedure(procedure.uid):
            shutil.rmtree(
                Path(index_dir) / THUMBNAIL_DIR / _safe_name(procedure.uid), ignore_errors=True
            )
    return removed
