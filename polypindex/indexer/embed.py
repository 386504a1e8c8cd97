"""Embedding one procedure for the index (docs/store.md): its tracklets' frames are streamed
in frame order through :class:`model.data.embedding.CropStream` and each tracklet is
embedded as soon as its last frame is cropped, so memory holds the crops of the
tracklets still open, never a whole video.

Depends only on the :class:`Embedder` protocol (``model.runtime.onnx.OnnxEncoder``
satisfies it), never on torch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from polypindex.indexer.sources import ProcedureSource
from polypindex.indexer.tables import TrackletRow
from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError, PolypIndexError
from polypindex.model.core.files import atomic_write
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.embedding import (
    EMBED_CHUNK,
    CropStream,
    SequenceEncoder,
    selected_frames,
)
from polypindex.model.data.preprocess import normalize

THUMBNAIL_DIR = "thumbnails"


# What the pipeline needs from an encoder: the one protocol of the embedding path.
Embedder = SequenceEncoder


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


@dataclass
class CropChunk:
    """Crops of some tracklets of one procedure, ready for the encoder (what the
    prefetch thread hands to the encoder thread).

    Attributes:
        procedure: the procedure they belong to.
        items: ``(tracklet index, uint8 crops (s, H, W, 3))`` in the order finished.
        done: the procedure's last chunk (``items`` may then be empty).
        decoded: frames decoded so far in this procedure.
    """

    procedure: ProcedureSource
    items: list[tuple[int, np.ndarray]]
    done: bool = False
    decoded: int = 0

    @property
    def frames(self) -> int:
        return int(sum(len(crops) for _, crops in self.items))


def procedure_chunks(
    procedure: ProcedureSource, preprocess: PreprocessConfig, fragment: FragmentConfig
) -> Iterator[CropChunk]:
    """Decode and crop one procedure's tracklets, in chunks of
    :data:`model.data.embedding.EMBED_CHUNK` tracklets (the last chunk has ``done=True``).

    Frames are chosen with :func:`model.data.embedding.selected_frames` (the encoder's
    whole-tracklet rule) and come in increasing order from ``procedure.frames``; a
    tracklet joins a chunk as soon as its last needed frame is cropped. The chunk
    boundaries depend only on the procedure, so embedding the chunks gives the same
    result whether they were made ahead (prefetch) or not.

    Raises:
        InvalidInputError: a needed frame was never read.
        ImageReadError: a frame cannot be decoded (from ``procedure.frames``).
    """
    tracklets = procedure.tracklets
    stream = CropStream(
        [(t.frame_ids, t.boxes) for t in tracklets],
        [[selected_frames(len(t), fragment)] for t in tracklets],
        procedure.frames,
        preprocess,
    )
    ready: list[tuple[int, np.ndarray]] = []
    for finished in stream:
        ready.extend((ti, sequences[0]) for ti, sequences in finished)
        if len(ready) >= EMBED_CHUNK:
            yield CropChunk(procedure, ready, decoded=stream.decoded)
            ready = []
    unfinished = stream.unfinished()
    if unfinished:
        raise InvalidInputError(
            f"procedure {procedure.uid!r} ({procedure.source}): frames of tracklet "
            f"{tracklets[unfinished[0]].key} were never read"
        )
    yield CropChunk(procedure, ready, done=True, decoded=stream.decoded)


class ProcedureEmbedder:
    """Embeds one procedure's crop chunks as they come, then builds its store rows."""

    def __init__(self, procedure: ProcedureSource, encoder: Embedder, batch_size: int) -> None:
        self.procedure, self.encoder, self.batch_size = procedure, encoder, batch_size
        n = len(procedure.tracklets)
        self.embeddings = np.empty((n, encoder.dim), dtype=np.float32)
        self.middle: list[np.ndarray | None] = [None] * n
        self.tracklets_done = 0
        self.frames_done = 0

    def add(self, items: Sequence[tuple[int, np.ndarray]]) -> None:
        """Normalise and embed one chunk's crops."""
        if not items:
            return
        config, dim, encoder = self.encoder.preprocess, self.encoder.dim, self.encoder
        seqs = [normalize(crops, config) for _, crops in items]
        out = np.asarray(encoder.embed_sequences(seqs, batch_size=self.batch_size), np.float32)
        if out.shape != (len(items), dim):
            raise EncoderMismatchError(
                f"encoder {encoder.version!r} returned shape {out.shape} for {len(items)} "
                f"tracklets; expected ({len(items)}, {dim})"
            )
        for row, (ti, crops) in enumerate(items):
            self.embeddings[ti] = out[row]
            self.middle[ti] = crops[len(crops) // 2].copy()
        self.tracklets_done += len(items)
        self.frames_done += int(sum(len(crops) for _, crops in items))

    def finish(self, decoded: int, index_dir: Path | None) -> ProcedureEmbedding:
        """The rows (thumbnails written under ``index_dir`` unless ``None``)."""
        uid, tracklets, embeddings = self.procedure.uid, self.procedure.tracklets, self.embeddings
        norms = np.linalg.norm(embeddings, axis=1)
        if not np.all(np.isfinite(embeddings)) or np.any(norms <= 0):
            raise PolypIndexError(
                f"procedure {uid!r}: the encoder returned NaN, infinite or zero embeddings"
            )
        rows: list[TrackletRow] = []
        for ti, tracklet in enumerate(tracklets):
            selection = selected_frames(len(tracklet), self.encoder.fragment)
            thumbnail: str | None = None
            crop = self.middle[ti]
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
                    boxes=summarize_boxes(tracklet.frame_ids, tracklet.boxes, selection),
                    identity_label=tracklet.identity_id,
                    thumbnail_path=thumbnail,
                    size_mm=float(size_mm) if isinstance(size_mm, int | float) else None,
                    histology=str(histology) if histology is not None else None,
                )
            )
        return ProcedureEmbedding(
            rows=rows, embeddings=embeddings, frames=self.frames_done, images_decoded=decoded
        )


def embed_procedure(
    procedure: ProcedureSource,
    encoder: Embedder,
    batch_size: int,
    index_dir: Path | None,
) -> ProcedureEmbedding:
    """Stream, crop and embed every tracklet of one procedure, in this thread
    (:func:`procedure_chunks` then :class:`ProcedureEmbedder`); memory holds the crops
    of the tracklets still open and of one chunk. Thumbnails (the middle embedded
    frame's crop) are written under ``index_dir`` once every tracklet is embedded;
    ``None`` writes none."""
    embedder = ProcedureEmbedder(procedure, encoder, batch_size)
    decoded = 0
    for chunk in procedure_chunks(procedure, encoder.preprocess, encoder.fragment):
        embedder.add(chunk.items)
        decoded = chunk.decoded
    return embedder.finish(decoded, index_dir)
