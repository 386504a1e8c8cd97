"""The world of the service benchmarks (``benchmarks/search_service.py``): a home with a
SQLite store of synthetic tracklets and its saved index, and the app serving it.

:func:`build_world` fills ``HOME`` once (procedures of clustered unit vectors, each
row with a size prediction, so hits carry predictions as with the demo's probes) and
saves the index generation; a later run with the same size reuses both (the 10^5 and
10^6 HNSW builds take minutes). :func:`make_app` is the uvicorn factory the benchmark
server runs (``uvicorn --factory polypindex.benchmarks.search_world:make_app``): the
real app over that home, with :class:`ServingStandIn` as the encoder so a query by
frames costs the decoding and the service path, not a model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.generations import generation_dir, open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.tables import PredictionRow, TrackletRow
from polypindex.indexer.vectors import IndexPolicy, verify_snapshot
from polypindex.model.core.layout import Layout

VERSION = "benchmark-serving-v1"
DIM_ENV = "POLYPINDEX_BENCH_DIM"
PER_PROCEDURE = 40


class ServingStandIn:
    """A benchmark stand-in for the serving encoder: the frames' mean colour, projected
    by a fixed random matrix and normalised (numpy only). Never serve it."""

    version = VERSION
    reid_threshold = 0.5

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._projection = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for img in images], axis=0)
        v = (mean.astype(np.float32) / 255.0 - 0.5) @ self._projection + np.float32(1e-3)
        return (v / np.linalg.norm(v)).astype(np.float32)


def clustered(n: int, dim: int, rng: np.random.Generator, group: int = 20) -> np.ndarray:
    """``n`` unit vectors in clusters of about ``group`` (as several tracklets of one polyp)."""
    centres = rng.standard_normal((max(1, n // group), dim)).astype(np.float32)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.5 / np.sqrt(dim / 16))
    x = centres[rng.integers(0, len(centres), n)] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_world(
    home: Path, n: int, dim: int, *, policy: IndexPolicy | None = None, seed: int = 0
) -> dict[str, Any]:
    """Fill ``home`` with ``n`` tracklets of dimension ``dim`` and their saved index
    (reused when already there); returns what was built and how long it took."""
    lay = Layout(home=home)
    store = Store(lay.database_url)
    out: dict[str, Any] = {"home": str(home), "n": n, "dim": dim}
    try:
        have = store.count_tracklets(VERSION)
        if have > n or (have and have < 0.9 * n):
            raise SystemExit(f"{home} holds {have} tracklets, not {n}: use another --home")
        out["deleted_by_earlier_runs"] = n - have if have else 0  # `large` deletes one procedure
        t0 = time.perf_counter()
        if have == 0:
            rng = np.random.default_rng(seed)
            vectors = clustered(n, dim, rng)
            for start in range(0, n, PER_PROCEDURE):
                uid = f"bench/{start // PER_PROCEDURE:06d}"
                rows = [
                    TrackletRow(
                        key=f"{uid}/t{j}",
                        start_frame=10 * j,
                        end_frame=10 * j + 7,
                        n_frames=8,
                        embedding=vectors[start + j],
                        identity_label=f"{uid}/polyp{j % 3}",
                        predictions=(PredictionRow("size", "diminutive", 0.8, "probe-bench"),),
                    )
                    for j in range(min(PER_PROCEDURE, n - start))
                ]
                store.replace_procedure(uid, "bench", "synthetic", VERSION, rows)
        out["store_seconds"] = round(time.perf_counter() - t0, 2)
        folder = generation_dir(lay.index_dir, VERSION)
        reused = verify_snapshot(folder) is None
        t0 = time.perf_counter()
        index = open_or_rebuild(lay.index_dir, store, VERSION, dim, save=True, policy=policy)
        out.update(
            index_reused=reused,
            index_seconds=round(time.perf_counter() - t0, 2),
            index_kind=index.kind,
            index_bytes=(folder / "index.faiss").stat().st_size,
        )
    finally:
        store.close()
    return out


def make_app() -> Any:
    """The uvicorn factory of the benchmark server: the app over ``$POLYPINDEX_HOME``."""
    from polypindex.service.app import create_app

    app = create_app()
    app.state.encoder = ServingStandIn(int(os.environ.get(DIM_ENV, "256")))
    return app
