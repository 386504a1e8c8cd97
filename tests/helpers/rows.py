"""Tracklet rows with random unit embeddings, for store and service tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from polypindex.indexer.tables import TrackletRow


def random_row(
    rng: np.random.Generator, dim: int, key: str, start_frame: int, n_frames: int, **fields: Any
) -> TrackletRow:
    """A row of ``n_frames`` frames from ``start_frame`` whose embedding is a random unit
    vector of ``dim`` values drawn from ``rng``; ``fields`` sets the other columns."""
    v = rng.standard_normal(dim).astype(np.float32)
    return TrackletRow(
        key=key,
        start_frame=start_frame,
        end_frame=start_frame + n_frames - 1,
        n_frames=n_frames,
        embedding=v / np.linalg.norm(v),
        **fields,
    )
