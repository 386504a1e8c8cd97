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

The pipeline depends only on the :class:`Embedder` protocol (``model.runtime.onnx.OnnxEncoder``
satisfies it), never on torch.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
from tqdm.auto import tqdm

from polypindex.indexer.embed import (
    CropChunk,
    Embedder,
    ProcedureEmbedder,
    ProcedureEmbedding,
    thumbnail_dir,
)
from polypindex.indexer.generations import (
    IndexSink,
    generation_dir,
    list_generations,
    open_or_rebuild,
)
from polypindex.indexer.grouping import group_procedure, reid_calibration
from polypindex.indexer.locations import Anchors, store_source
from polypindex.indexer.predictions import check_probes, predict
from polypindex.indexer.prefetch import Prefetch, ProcedureFeeder, procedure_frames
from polypindex.indexer.progress import IndexReport, Progress, RunTally
from polypindex.indexer.sources import ProcedureSource, coco_sources
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import IndexPolicy, VectorIndex
from polypindex.model.core.errors import InvalidInputError, NotFoundError
from polypindex.model.data.config import TrackletConfig, check_whole_tracklet
from polypindex.model.scoring.probe import Probe

logger = logging.getLogger(__name__)


__all__ = [
    "IndexOptions",
    "delete_procedure",
    "index_dataset",
    "index_sources",
    "retire_generation",
]


class IndexOptions(TypedDict, total=False):
    """Options :func:`index_dataset` passes on to :func:`index_sources` (see there)."""

    batch_size: int
    thumbnails: bool
    on_progress: Callable[[Progress], None] | None
    snapshot_every_s: float
    policy: IndexPolicy | None
    probes: Sequence[Probe]
    prefetch: int
    progress_every_s: float
    anchors: Anchors | None


def open_encoder_generation(
    index_dir: Path, store: Store, encoder: Embedder, policy: IndexPolicy | None = None
) -> VectorIndex:
    """The index generation of ``encoder`` under ``index_dir``, loaded or rebuilt and caught
    up from the store (:func:`indexer.generations.open_or_rebuild`), its snapshot saved, its
    sidecar recording the encoder's crop and fragment settings."""
    return open_or_rebuild(
        index_dir,
        store,
        encoder.version,
        encoder.dim,
        preprocess=encoder.preprocess,
        fragment=encoder.fragment,
        save=True,
        policy=policy,
    )


def commit_procedure(
    procedure: ProcedureSource,
    result: ProcedureEmbedding,
    store: Store,
    index: IndexSink,
    encoder: Embedder,
    probes: Sequence[Probe] = (),
    calibration: Any = None,
    anchors: Anchors | None = None,
    if_absent: bool = False,
) -> list[int]:
    """Write one embedded procedure: the probes' predictions added to its rows, its rows
    in one store transaction (replacing an older version of it: idempotent), then its
    vectors in the index, then its polyp entities. Returns the new tracklet ids.

    ``if_absent``: the procedure was not stored when this run began (it indexes without
    ``force``), so a copy stored since is another writer's: ConflictError, nothing kept
    (docs/store.md#concurrent-writers).

    With ``anchors``, the source is stored relative to its data root or the home
    (:func:`indexer.locations.store_source`); without, as the source gives it."""
    uid = procedure.uid
    source = procedure.source if anchors is None else store_source(procedure.source, anchors)
    if probes:
        result.rows[:] = [
            replace(row, predictions=predict(probes, row.embedding)) for row in result.rows
        ]
    old_ids = store.tracklet_ids_for_procedure(uid)
    # 1) the source of truth, in one transaction ...
    new_ids = store.replace_procedure(
        uid, procedure.dataset_id, source, encoder.version, result.rows, if_absent=if_absent
    )
    # 2) ... then the derived index (a crash here is repaired by the catch-up on open).
    index.remove(old_ids)
    index.add(
        np.asarray(new_ids, dtype=np.int64), result.embeddings, encoder_version=encoder.version
    )
    # 3) the procedure's polyp entities (docs/grouping.md), from the stored rows
    group_procedure(store, uid, encoder.version, calibration, reid_threshold=encoder.reid_threshold)
    return list(new_ids)


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
    prefetch: int = 2,
    progress_every_s: float = 1.0,
    sink: IndexSink | None = None,
    anchors: Anchors | None = None,
) -> IndexReport:
    """Index a batch of procedures into the store and the index generation of ``encoder``.

    For each procedure: skip it if it is already stored with this encoder version
    (unless ``force``), else stream, crop and embed its tracklets, commit its rows
    in one transaction (replacing an older version of it), then update the index.
    The snapshot is saved at most every ``snapshot_every_s`` seconds and at the end.

    Decoding and cropping run ``prefetch`` chunks ahead of the encoder in a thread
    (:class:`indexer.prefetch.Prefetch`), across procedure boundaries; ``prefetch=0``
    does everything in this thread. Both give the same rows and embeddings (the chunks
    are the same, :func:`indexer.embed.procedure_chunks`).

    Args:
        procedures: the procedures (an iterable: sources may be built lazily).
        store: the SQL store.
        index_dir: index root (generations and ``thumbnails/`` live under it).
        encoder: the embedder (``fragment.fragment_length`` must be -1).
        force: re-embed and replace procedures already stored.
        progress: show a tqdm progress bar (frames, tracklets/s, ETA).
        total: number of procedures, for the ETA when ``procedures`` has no ``len``.
        batch_size: tracklets per encoder batch.
        thumbnails: write the middle frame's crop of each tracklet as a JPEG.
        on_progress: called with a :class:`Progress` after each procedure and after
            embedded chunks (at most every ``progress_every_s`` seconds).
        snapshot_every_s: least seconds between two index snapshots (0: after each procedure).
        policy: index kind threshold / HNSW parameters / device.
        description: the progress bar's label.
        probes: size / histology probes of this encoder; each tracklet's predictions
            are stored with its row (same transaction).
        prefetch: crop chunks made ahead of the encoder (0: no prefetch thread).
        progress_every_s: least seconds between two in-procedure progress reports.
        sink: where the vectors go (default: the generation opened here under
            ``index_dir``; the service passes its serving index).
        anchors: the home and data roots the stored sources are made relative to
            (:mod:`indexer.locations`; default: stored as the sources give them).

    Returns:
        The :class:`IndexReport`.
    """
    tally = RunTally()
    check_whole_tracklet(encoder.fragment)
    check_probes(probes, encoder.version)
    if prefetch < 0:
        raise InvalidInputError(f"prefetch must be >= 0, got {prefetch}")
    totals: tuple[int, int] | None = None
    if isinstance(procedures, Sequence):
        total = len(procedures) if total is None else total
        totals = (
            sum(len(p.tracklets) for p in procedures),
            sum(procedure_frames(p, encoder.fragment) for p in procedures),
        )
    out_dir = Path(index_dir)
    index: IndexSink = (
        sink if sink is not None else open_encoder_generation(out_dir, store, encoder, policy)
    )
    calibration = reid_calibration(encoder)
    dirty = False
    last_save = time.monotonic()
    last_report = 0.0
    bar = tqdm(
        total=totals[1] if totals else None,
        unit="frame",
        desc=description,
        disable=not progress,
    )

    def report(uid: str | None, extra_tracklets: int, extra_frames: int, force_: bool) -> None:
        nonlocal last_report
        now = time.perf_counter()
        if not force_ and now - last_report < progress_every_s:
            return
        last_report = now
        tracklets, frames = tally.tracklets + extra_tracklets, tally.frames + extra_frames
        elapsed = max(now - tally.started, 1e-9)
        eta = None
        if totals is not None and frames > 0:
            eta = elapsed / frames * max(totals[1] - frames - tally.skipped_frames, 0)
        state = Progress(
            procedures_done=tally.procedures_done,
            procedures_total=total,
            current_uid=uid,
            tracklets=tracklets,
            frames=frames,
            elapsed_s=elapsed,
            tracklets_per_s=tracklets / elapsed,
            eta_s=eta,
            tracklets_total=totals[0] if totals else None,
            frames_total=totals[1] if totals else None,
            frames_per_s=frames / elapsed,
        )
        bar.set_postfix(
            procedures=state.procedures_done,
            tracklets=tracklets,
            rate=f"{state.tracklets_per_s:.1f} tracklets/s",
        )
        if on_progress is not None:
            on_progress(state)

    def count_skip(p: ProcedureSource) -> None:
        frames = procedure_frames(p, encoder.fragment)
        tally.skipped(frames=frames)
        bar.update(frames)
        report(p.uid, 0, 0, True)

    feeder = ProcedureFeeder(
        procedures,
        lambda p: not force and store.has_procedure(p.uid, encoder.version),
        count_skip,
        encoder.preprocess,
        encoder.fragment,
        lookahead=2 if prefetch else 1,
    )
    ahead: Prefetch[CropChunk] | None = None
    embedder: ProcedureEmbedder | None = None
    discard = False
    try:
        feeder.fill()
        chunks = feeder.chunks()
        if prefetch:
            ahead = Prefetch(chunks, depth=prefetch, name="index-prefetch")
        for chunk in ahead if ahead is not None else chunks:
            procedure = chunk.procedure
            if embedder is None or embedder.procedure is not procedure:
                bar.set_description(f"{description} {procedure.uid}")
                embedder = ProcedureEmbedder(procedure, encoder, batch_size)
                # checked again: the same UID earlier in this batch may be stored by now
                discard = not force and store.has_procedure(procedure.uid, encoder.version)
            if not discard:
                embedder.add(chunk.items)
                bar.update(chunk.frames)
                report(procedure.uid, embedder.tracklets_done, embedder.frames_done, False)
            if not chunk.done:
                continue
            feeder.procedure_done()
            if discard:
                count_skip(procedure)
                continue
            uid = procedure.uid
            result = embedder.finish(chunk.decoded, out_dir if thumbnails else None)
            new_ids = commit_procedure(
                procedure,
                result,
                store,
                index,
                encoder,
                probes,
                calibration,
                anchors,
                if_absent=not force,
            )
            dirty = True
            tally.add(uid, len(new_ids), result.frames, result.images_decoded)
            if time.monotonic() - last_save >= snapshot_every_s:
                index.save()
                dirty, last_save = False, time.monotonic()
            report(uid, 0, 0, True)
    finally:
        feeder.close()
        if ahead is not None:
            ahead.close()
        bar.close()
        if dirty:
            index.save()
    result_report = tally.report(len(index), encoder.version)
    logger.info("%s", result_report)
    return result_report


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
            ``policy``, ``probes``, ``anchors`` as for :func:`index_sources`.

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
