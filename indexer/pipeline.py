"""Indexing pipeline: procedures → tracklets → crops → encoder → store + FAISS (docs/store.md).

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

import logging
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
from tqdm.auto import tqdm

from polypindex.indexer.embed import (
    THUMBNAIL_DIR,
    Embedder,
    embed_procedure,
    summarize_boxes,
    thumbnail_dir,
)
from polypindex.indexer.generations import generation_dir, list_generations, open_or_rebuild
from polypindex.indexer.predictions import check_probes, installed_probes, predict, predict_stored
from polypindex.indexer.sources import ProcedureSource, coco_sources, procedure_uid
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import IndexPolicy
from polypindex.model.config import TrackletConfig, check_whole_tracklet
from polypindex.model.errors import InvalidInputError, NotFoundError
from polypindex.model.probe import Probe

logger = logging.getLogger(__name__)


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
    "THUMBNAIL_DIR",
    "Embedder",
    "IndexOptions",
    "IndexReport",
    "Progress",
    "check_probes",
    "delete_procedure",
    "index_dataset",
    "index_sources",
    "installed_probes",
    "predict",
    "predict_stored",
    "procedure_uid",
    "retire_generation",
    "summarize_boxes",
]


class IndexOptions(TypedDict, total=False):
    """Options :func:`index_dataset` passes on to :func:`index_sources` (see there)."""

    batch_size: int
    thumbnails: bool
    on_progress: Callable[[Progress], None] | None
    snapshot_every_s: float
    policy: IndexPolicy | None
    probes: Sequence[Probe]


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
    check_whole_tracklet(encoder.fragment)
    check_probes(probes, encoder.version)
    if total is None and isinstance(procedures, Sequence):
        total = len(procedures)
    out_dir = Path(index_dir)
    index = open_or_rebuild(
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
                result = embed_procedure(
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
    **options: Unpack[IndexOptions],
) -> IndexReport:
    """Index every procedure (video) of a COCO split (see :func:`index_sources`).

    Args:
        root: dataset folder (``ROOT/images``, ``ROOT/annotations/instances_{split}.json``).
        split: ``train``, ``val`` or ``test``.
        procedure_uids: only these procedures (UIDs as in :func:`procedure_uid`).
        tracklet_config: how annotations are cut into tracklets (default docs/method.md#tracklets).
        options: ``batch_size``, ``thumbnails``, ``on_progress``, ``snapshot_every_s``,
            ``policy``, ``probes`` as for :func:`index_sources`.

    Raises:
        InvalidAnnotationError: the annotation file or a record is malformed.
        ImageReadError: a frame cannot be read (nothing is written for its procedure).
        InvalidInputError: an unknown UID in ``procedure_uids``.
    """
    check_whole_tracklet(encoder.fragment)
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
        description=f"indexing {split}",
        **options,
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
        index = open_or_rebuild(index_dir, store, str(version), dim)
        index.save()
    shutil.rmtree(thumbnail_dir(index_dir, uid), ignore_errors=True)
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
            shutil.rmtree(thumbnail_dir(index_dir, procedure.uid), ignore_errors=True)
    return removed
