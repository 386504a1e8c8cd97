"""Indexing pipeline: COCO split → tracklets → crops → encoder → store + FAISS (SPEC §8).

Per procedure, the SQL transaction commits first and the index snapshot is
saved after it; the index catches up from the store when it is opened, so a
crash between the two loses nothing. Re-indexing a procedure replaces it
atomically (same UID twice = no duplicates).

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm.auto import tqdm

from indexer.store import Store, TrackletRow
from indexer.vector_index import VectorIndex
from model.coco import annotation_path, load_coco_split
from model.config import FragmentConfig, PreprocessConfig, TrackletConfig
from model.errors import ConfigError, EncoderMismatchError, InvalidInputError, PolypIndexError
from model.preprocess import crop_frame, normalize, read_image
from model.tracklets import Tracklet, fragment_indices

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


def procedure_uid(sequence_id: str, dataset_id: str | None) -> str:
    """The procedure UID: ``dataset_id:sequence_id``, or ``sequence_id`` without a dataset id."""
    return f"{dataset_id}:{sequence_id}" if dataset_id else str(sequence_id)


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


def _embed_procedure(
    uid: str,
    tracklets: Sequence[Tracklet],
    encoder: Embedder,
    batch_size: int,
    index_dir: Path | None,
) -> _ProcedureEmbedding:
    """Read, crop and embed every tracklet of one procedure (nothing is written to the store)."""
    config = encoder.preprocess
    size = config.im_size
    selections: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    # image path -> [(tracklet index, slot in its crop stack, box)]: each file is decoded once.
    needs: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for ti, tracklet in enumerate(tracklets):
        if not tracklet.image_paths:
            raise InvalidInputError(
                f"tracklet {tracklet.key} has no image paths to read frames from"
            )
        pieces = fragment_indices(len(tracklet), encoder.fragment)
        if len(pieces) != 1 or len(pieces[0]) == 0:
            raise ConfigError(
                f"indexing embeds each tracklet whole: the encoder's fragment config must have "
                f"fragment_length=-1, got {encoder.fragment}"
            )
        selected = pieces[0]
        selections.append(selected)
        crops.append(np.empty((len(selected), size, size, 3), dtype=np.uint8))
        for slot, pos in enumerate(selected):
            needs.setdefault(tracklet.image_paths[int(pos)], []).append(
                (ti, slot, tracklet.boxes[int(pos)])
            )
    for path in sorted(needs):
        image = read_image(path)  # ImageReadError names the file
        for ti, slot, box in needs[path]:
            crops[ti][slot] = crop_frame(image, box, config)

    dim = encoder.dim
    embeddings = np.empty((len(tracklets), dim), dtype=np.float32)
    for start in range(0, len(tracklets), _EMBED_CHUNK):
        stop = min(start + _EMBED_CHUNK, len(tracklets))
        seqs = [normalize(crops[i], config) for i in range(start, stop)]
        out = np.asarray(encoder.embed_sequences(seqs, batch_size=batch_size), dtype=np.float32)
        if out.shape != (stop - start, dim):
            raise EncoderMismatchError(
                f"encoder {encoder.version!r} returned shape {out.shape} for {stop - start} "
                f"tracklets; expected ({stop - start}, {dim})"
            )
        embeddings[start:stop] = out
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.isfinite(embeddings)) or np.any(norms <= 0):
        raise PolypIndexError(
            f"procedure {uid!r}: the encoder returned NaN, infinite or zero embeddings"
        )

    rows: list[TrackletRow] = []
    for ti, tracklet in enumerate(tracklets):
        thumbnail: str | None = None
        if index_dir is not None:
            rel = Path(THUMBNAIL_DIR) / _safe_name(uid) / f"{_safe_name(tracklet.key)}.jpg"
            _write_thumbnail(index_dir / rel, crops[ti][len(crops[ti]) // 2])
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
        images_decoded=len(needs),
    )


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
) -> IndexReport:
    """Index every procedure (video) of a COCO split.

    For each procedure: decode the frames the encoder needs (each image once),
    crop them (``model.preprocess``, the encoder's own settings), embed each
    tracklet whole, then commit the procedure's rows in one transaction and
    update + save the FAISS index. Procedures already stored with this encoder
    version are skipped unless ``force``.

    Args:
        root: dataset folder (``ROOT/images``, ``ROOT/annotations/instances_{split}.json``).
        split: ``train``, ``val`` or ``test``.
        store: the SQL store.
        index_dir: folder of the FAISS snapshot (and ``thumbnails/``).
        encoder: the embedder (``fragment.fragment_length`` must be -1).
        tracklet_config: how annotations are cut into tracklets (default SPEC §3).
        force: re-embed and replace procedures already stored.
        progress: show a tqdm progress bar.
        procedure_uids: only these procedures (UIDs as in :func:`procedure_uid`).
        batch_size: tracklets per encoder batch.
        thumbnails: write the middle frame's crop of each tracklet as a JPEG.

    Returns:
        The :class:`IndexReport`.

    Raises:
        InvalidAnnotationError: the annotation file or a record is malformed.
        ImageReadError: a frame cannot be read (nothing is written for its procedure).
        InvalidInputError: an unknown UID in ``procedure_uids``.
    """
    started = time.perf_counter()
    if encoder.fragment.fragment_length != -1:
        raise ConfigError(
            f"indexing embeds each tracklet whole: the encoder's fragment config must have "
            f"fragment_length=-1, got {encoder.fragment}"
        )
    tracklet_config = tracklet_config or TrackletConfig()
    out_dir = Path(index_dir)
    data = load_coco_split(root, split)
    source = str(annotation_path(root, split))

    dataset_ids: dict[str, str | None] = {}
    for image in data.coco.imgs.values():
        seq = str(image["sequence_id"])
        if dataset_ids.get(seq) is None:
            value = image.get("dataset_id")
            dataset_ids[seq] = str(value) if value not in (None, "") else None
    by_sequence: dict[str, list[Tracklet]] = {seq: [] for seq in data.sequences}
    for tracklet in data.tracklets(tracklet_config):
        by_sequence[tracklet.sequence_id].append(tracklet)
    uids = {seq: procedure_uid(seq, dataset_ids.get(seq)) for seq in by_sequence}
    selected = sorted(by_sequence, key=lambda s: uids[s])
    if procedure_uids is not None:
        wanted = set(procedure_uids)
        unknown = sorted(wanted - set(uids.values()))
        if unknown:
            raise InvalidInputError(
                f"{source}: unknown procedure UID(s) {unknown}; known: {sorted(uids.values())}"
            )
        selected = [s for s in selected if uids[s] in wanted]

    index = VectorIndex.open_or_rebuild(
        out_dir,
        store,
        encoder.version,
        encoder.dim,
        preprocess=encoder.preprocess,
        fragment=encoder.fragment,
        save=True,
    )
    indexed: list[str] = []
    skipped = n_tracklets = n_frames = n_images = 0
    bar = tqdm(
        total=len(selected), unit="procedure", desc=f"indexing {split}", disable=not progress
    )
    try:
        for seq in selected:
            uid = uids[seq]
            bar.set_description(f"indexing {uid}")
            if not force and store.has_procedure(uid, encoder.version):
                skipped += 1
                bar.update(1)
                continue
            result = _embed_procedure(
                uid, by_sequence[seq], encoder, batch_size, out_dir if thumbnails else None
            )
            old_ids = store.tracklet_ids_for_procedure(uid)
            # 1) the source of truth, in one transaction ...
            new_ids = store.replace_procedure(
                uid, dataset_ids.get(seq), source, encoder.version, result.rows
            )
            # 2) ... then the derived index (a crash here is repaired by the catch-up on open).
            removed = index.remove(old_ids)
            index.add(
                np.asarray(new_ids, dtype=np.int64),
                result.embeddings,
                encoder_version=encoder.version,
            )
            if removed or new_ids:
                index.save(out_dir)
            indexed.append(uid)
            n_tracklets += len(new_ids)
            n_frames += result.frames
            n_images += result.images_decoded
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(tracklets=n_tracklets, rate=f"{n_tracklets / elapsed:.1f} tracklets/s")
            bar.update(1)
    finally:
        bar.close()
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


def delete_procedure(uid: str, store: Store, index_dir: str | Path) -> list[int]:
    """Delete a procedure from the store, then its vectors from the index snapshot.

    Returns:
        The ids of the tracklets removed.

    Raises:
        ProcedureNotFoundError: no procedure has this UID.
    """
    removed = store.delete_procedure(uid)
    infos = VectorIndex.read_infos(index_dir)
    if infos is not None and infos.get("encoder_version") and isinstance(infos.get("dim"), int):
        # Loading syncs with the store, which drops the deleted ids.
        index = VectorIndex.open_or_rebuild(
            index_dir, store, str(infos["encoder_version"]), int(infos["dim"])
        )
        index.remove(removed)
        index.save(index_dir)
    shutil.rmtree(Path(index_dir) / THUMBNAIL_DIR / _safe_name(uid), ignore_errors=True)
    return removed
