"""Embedding one procedure for the index (docs/store.md): its tracklets' frames are streamed
in frame order through :class:`model.embedding.CropStream` and each tracklet is
embedded as soon as its last frame is cropped, so memory holds the crops of the
tracklets still open, never a whole video.

Depends only on the :class:`Embedder` protocol (``model.runtime.OnnxEncoder``
satisfies it), never on torch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from polypindex.indexer.sources import ProcedureSource
from polypindex.indexer.store import TrackletRow
from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.embedding import EMBED_CHUNK, CropStream, selected_frames
from polypindex.model.errors import EncoderMismatchError, InvalidInputError, PolypIndexError
from polypindex.model.files import atomic_write
from polypindex.model.preprocess import normalize

THUMBNAIL_DIR = "thumbnails"


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


def safe_name(text: str) -> str:
    """A file-name-safe, collision-free form of a UID or tracklet key."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')[:80]}-{digest}"


def thumbnail_dir(index_dir: str | Path, uid: str) -> Path:
    """The folder of a procedure's thumbnails under the index root."""
    return Path(index_dir) / THUMBNAIL_DIR / safe_name(uid)


def _write_thumbnail(path: Path, crop_rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(crop_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    if not ok:
        raise PolypIndexError(f"cannot encode thumbnail {path}")
    atomic_write(path, buf.tobytes(), durable=False)


@dataclass
class ProcedureEmbedding:
    """One procedure's tracklets, embedded (nothing written to the store yet).

    Attributes:
        rows: one store row per tracklet, in the procedure's order.
        embeddings: (N, D) float32, row ``i`` for ``rows[i]``.
        frames: frames fed to the encoder.
        images_decoded: frames decoded (each at most once).
    """

    rows: list[TrackletRow]
    embeddings: np.ndarray
    frames: int
    images_decoded: int


def embed_procedure(
    procedure: ProcedureSource,
    encoder: Embedder,
    batch_size: int,
    index_dir: Path | None,
) -> ProcedureEmbedding:
    """Stream, crop and embed every tracklet of one procedure.

    Frames are chosen with :func:`model.embedding.selected_frames` (the encoder's
    whole-tracklet rule) and come in increasing order from ``procedure.frames``; a
    tracklet is embedded (in chunks of :data:`model.embedding.EMBED_CHUNK`) as soon as
    its last needed frame is cropped, and its crops are then dropped. Thumbnails (the
    middle embedded frame's crop) are written under ``index_dir`` once every tracklet
    is embedded; ``None`` writes none.
    """
    uid, tracklets = procedure.uid, procedure.tracklets
    config, dim = encoder.preprocess, encoder.dim
    selections = [selected_frames(len(t), encoder.fragment) for t in tracklets]
    stream = CropStream(
        [(t.frame_ids, t.boxes) for t in tracklets],
        [[s] for s in selections],
        procedure.frames,
        config,
    )
    middle: list[np.ndarray | None] = [None] * len(tracklets)
    embeddings = np.empty((len(tracklets), dim), dtype=np.float32)
    ready: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        seqs = [normalize(crops, config) for _, crops in ready]
        out = np.asarray(encoder.embed_sequences(seqs, batch_size=batch_size), dtype=np.float32)
        if out.shape != (len(ready), dim):
            raise EncoderMismatchError(
                f"encoder {encoder.version!r} returned shape {out.shape} for {len(ready)} "
                f"tracklets; expected ({len(ready)}, {dim})"
            )
        for row, (ti, crops) in enumerate(ready):
            embeddings[ti] = out[row]
            middle[ti] = crops[len(crops) // 2].copy()
        ready.clear()

    for done in stream:
        ready.extend((ti, sequences[0]) for ti, sequences in done)
        if len(ready) >= EMBED_CHUNK:
            flush()
    if ready:
        flush()
    unfinished = stream.unfinished()
    if unfinished:
        raise InvalidInputError(
            f"procedure {uid!r} ({procedure.source}): frames of tracklet "
            f"{tracklets[unfinished[0]].key} were never read"
        )
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.all(np.isfinite(embeddings)) or np.any(norms <= 0):
        raise PolypIndexError(
            f"procedure {uid!r}: the encoder returned NaN, infinite or zero embeddings"
        )
    rows: list[TrackletRow] = []
    for ti, tracklet in enumerate(tracklets):
        thumbnail: str | None = None
        crop = middle[ti]
        if index_dir is not None and crop is not None:
            rel = Path(THUMBNAIL_DIR) / safe_name(uid) / f"{safe_name(tracklet.key)}.jpg"
            _write_thumbnail(index_dir / rel, crop)
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
    return ProcedureEmbedding(
        rows=rows,
        embeddings=embeddings,
        frames=int(sum(len(s) for s in selections)),
        images_decoded=stream.decoded,
    )
