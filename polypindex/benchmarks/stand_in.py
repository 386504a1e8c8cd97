"""A stand-in encoder for the benchmarks that run without an exported model.

:class:`StandInEncoder` has the :class:`~indexer.embed.Embedder` protocol and costs
next to nothing (numpy only): the per-channel means of each crop over a 4 × 4 grid,
averaged over the tracklet's frames and projected by a fixed random matrix. With it
a benchmark measures the pipeline's own cost (decoding, cropping, SQL, FAISS), not a
model's. Its embeddings mean nothing; never serve or evaluate them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polypindex.model.data.config import FragmentConfig, PreprocessConfig

GRID = 4  # cells per side of the pooling grid


class StandInEncoder:
    """Deterministic and cheap: a benchmark stand-in for an exported encoder, not a model."""

    version = "benchmark-stand-in-v1"
    dim = 16
    preprocess = PreprocessConfig(im_size=32, bbox_scale_factor=2.0)
    fragment = FragmentConfig(stride=1, fragment_length=-1, max_frames=4)
    reid_threshold = 0.5

    def __init__(self, seed: int = 0) -> None:
        features = 3 * GRID * GRID
        rng = np.random.default_rng(seed)
        self.projection = rng.normal(size=(features, self.dim)).astype(np.float32)

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """``seqs[i]``: float32 ``(s_i, 3, H, W)`` → float32 ``(N, dim)``, L2-normalised."""
        pooled = np.stack([self._pool(np.asarray(seq, dtype=np.float32)) for seq in seqs])
        out = pooled @ self.projection + np.float32(1e-3)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    @staticmethod
    def _pool(seq: np.ndarray) -> np.ndarray:
        """Mean over frames, then over each cell of a ``GRID × GRID`` grid: ``(3·GRID²,)``."""
        mean = seq.mean(axis=0)
        channels, height, width = mean.shape
        cells = mean.reshape(channels, GRID, height // GRID, GRID, width // GRID)
        return cells.mean(axis=(2, 4)).ravel()
