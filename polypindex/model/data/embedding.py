"""The one path from a tracklet to the encoder's input sequences (docs/method.md#fragments).

Every consumer — the ONNX runtime and the service, the indexer, the probes, the
training data module's evaluation, the benchmarks — goes through these functions:

1. **Which frames** of an ``n``-frame tracklet are embedded: :func:`selected_frames`
   (the whole-tracklet rule of indexing and evaluation) or, for several fragments per
   tracklet, :func:`tracklet_fragments`.
2. **Crops**: each needed frame is decoded once, in increasing frame order, and each
   needed box is cropped with :func:`model.data.preprocess.crop_frame` and the encoder's
   :class:`model.data.config.PreprocessConfig` — by :class:`CropStream` when frames are
   streamed (a video, the indexer: memory holds only the tracklets still open), or by
   :func:`cached_sequences` through a :class:`model.data.preprocess.CropCache` when the
   frames are image files (training, probes, benchmarks).
3. **Sequences**: per fragment, the uint8 crops ``(s, H, W, 3)`` in fragment order,
   then :func:`model.data.preprocess.normalize` before the encoder.

:func:`embedding_settings` is the part of the encoder version that covers this path.
numpy only (no torch): the serving path imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np

from polypindex.model.data.config import (
    FragmentConfig,
    PreprocessConfig,
    check_whole_tracklet,
    whole_tracklet,
    whole_tracklet_error,
)
from polypindex.model.data.preprocess import CropCache, crop_frame
from polypindex.model.data.tracklets import Tracklet, fragment_indices

__all__ = [
    "EMBED_CHUNK",
    "CropStream",
    "FrameReader",
    "cached_sequences",
    "embedding_settings",
    "selected_frames",
    "tracklet_fragments",
]

EMBED_CHUNK = 32
"""Tracklets normalised and sent to the encoder at a time by streaming callers
(bounds the float32 memory)."""

FrameReader = Callable[[list[int]], Iterable[tuple[int, np.ndarray]]]
"""``frame ids (sorted) → (frame id, RGB uint8 image)`` in increasing order, each once
(``ProcedureSource.frames`` has this shape)."""


class SequenceEncoder(Protocol):
    """What the embedding path needs of an encoder: its settings and ``embed_sequences``.

    ``model.runtime.onnx.OnnxEncoder`` and ``model.runtime.openvino.OpenVinoEncoder`` have it
    (their full interface is :class:`polypindex.model.runtime.loader.EncoderRuntime`); the
    indexer takes any object with it (``indexer.embed.Embedder``), stand-ins included.
    """

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


def tracklet_fragments(n_frames: int, fragment: FragmentConfig) -> list[np.ndarray]:
    """The fragments of an ``n_frames`` tracklet that are embedded, as index arrays into
    its frames (stride, fragment length, ``drop_last``, ``max_frames``; see
    :func:`model.data.tracklets.fragment_indices`). Under the whole-tracklet rule this is
    one array, :func:`selected_frames`."""
    return fragment_indices(n_frames, fragment)


def selected_frames(n_frames: int, fragment: FragmentConfig) -> np.ndarray:
    """The frames embedded for a whole tracklet (indexing, evaluation, the service):
    every ``stride``-th frame, uniformly thinned to ``max_frames``.

    Raises:
        ConfigError: ``fragment`` is not the whole-tracklet rule, or the tracklet is empty.
    """
    check_whole_tracklet(fragment)
    pieces = tracklet_fragments(n_frames, fragment)
    if len(pieces) != 1 or len(pieces[0]) == 0:
        raise whole_tracklet_error(fragment)
    return pieces[0]


def embedding_settings(preprocess: PreprocessConfig, fragment: FragmentConfig) -> str:
    """The crop settings and the whole-tracklet frame rule as canonical JSON: what an
    encoder version covers besides architecture and weights, so embeddings made with
    other crops or other frames never share an index generation."""
    return json.dumps(
        {"preprocess": preprocess.to_dict(), "fragment": whole_tracklet(fragment).to_dict()},
        sort_keys=True,
    )


def _needed(fragments: Sequence[np.ndarray]) -> np.ndarray:
    """The distinct frame positions used by ``fragments``, increasing."""
    if not fragments:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([np.asarray(f, dtype=np.int64) for f in fragments]))


def _assemble(
    crops: np.ndarray, needed: np.ndarray, fragments: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per fragment, its rows of ``crops`` (one row per ``needed`` position), in order."""
    return [crops[np.searchsorted(needed, np.asarray(f, dtype=np.int64))] for f in fragments]


def cached_sequences(
    tracklet: Tracklet, fragments: Sequence[np.ndarray], cache: CropCache
) -> list[np.ndarray]:
    """uint8 crop sequences ``(s, H, W, 3)`` of a tracklet's fragments, read from its image
    files through ``cache`` (each needed frame cropped once, with ``cache.config``)."""
    needed = _needed(fragments)
    crops = cache.get([tracklet.image_paths[int(i)] for i in needed], tracklet.boxes[needed])
    return _assemble(crops, needed, fragments)


class CropStream:
    """Streams the crops of many tracklets of one video, decoding each frame once.

    Iterating reads the needed frames in increasing frame id through ``read_frames``
    and yields, after each decoded frame, the tracklets whose last needed frame it was:
    ``(tracklet index, [uint8 (s, H, W, 3) per fragment])``. A tracklet's crops are
    dropped once yielded, so memory holds only the tracklets still open.

    Args:
        tracklets: ``(frame_ids (n,), boxes (n, 4) xywh)`` per tracklet.
        fragments: per tracklet, its fragments as index arrays into its frames.
        read_frames: see :data:`FrameReader`.
        config: the crop settings.

    Attributes:
        decoded: frames decoded so far.
    """

    def __init__(
        self,
        tracklets: Sequence[tuple[np.ndarray, np.ndarray]],
        fragments: Sequence[Sequence[np.ndarray]],
        read_frames: FrameReader,
        config: PreprocessConfig,
    ) -> None:
        self.config = config
        self.fragments = [list(f) for f in fragments]
        self._read_frames = read_frames
        self._needed = [_needed(f) for f in self.fragments]
        self._remaining = np.asarray([len(n) for n in self._needed], dtype=np.int64)
        # frame id -> [(tracklet, row in its crop stack, box)]
        self._needs: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        for ti, ((frame_ids, boxes), needed) in enumerate(
            zip(tracklets, self._needed, strict=True)
        ):
            for row, pos in enumerate(needed.tolist()):
                self._needs.setdefault(int(frame_ids[pos]), []).append((ti, row, boxes[pos]))
        self.decoded = 0

    def __iter__(self) -> Iterator[list[tuple[int, list[np.ndarray]]]]:
        size = self.config.im_size
        stacks: dict[int, np.ndarray] = {}
        for frame_id, image in self._read_frames(sorted(self._needs)):
            self.decoded += 1
            done: list[tuple[int, list[np.ndarray]]] = []
            for ti, row, box in self._needs.get(int(frame_id), ()):
                if ti not in stacks:
                    stacks[ti] = np.empty((len(self._needed[ti]), size, size, 3), dtype=np.uint8)
                stacks[ti][row] = crop_frame(image, box, self.config)
                self._remaining[ti] -= 1
                if self._remaining[ti] == 0:
                    crops = stacks.pop(ti)
                    done.append((ti, _assemble(crops, self._needed[ti], self.fragments[ti])))
            yield done

    def unfinished(self) -> list[int]:
        """Tracklets with a needed frame not read (yet): after iterating, the frames
        ``read_frames`` never gave."""
        return [int(i) for i in np.flatnonzero(self._remaining > 0)]
