"""The service API tests' world: a fake encoder, a store and index of known vectors, and
the requests and checks the tests share.

The fake encoder embeds a tracklet as a fixed projection of its mean pixel colour,
so a query by frames has a known answer.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi.testclient import TestClient

from helpers.rows import random_row
from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.tables import TrackletRow
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

DIM = 16
VERSION = "fake-v1"
OTHER_VERSION = "old-v0"
PROCEDURES = ("proc/a", "proc/b", "proc/c")
PER_PROCEDURE = 6
RED = (200, 30, 30)
MAX_FRAMES = 8
MAX_K = 50


class MeanColourEncoder:
    """Deterministic stand-in for ``OnnxEncoder``: a projection of the mean RGB colour."""

    version = VERSION
    dim = DIM

    def __init__(self, reid_threshold: float = 0.6) -> None:
        self.reid_threshold = reid_threshold
        self._projection = np.random.default_rng(123).standard_normal((DIM, 3))

    def vector_for_colour(self, rgb: Sequence[float]) -> np.ndarray:
        v = self._projection @ (np.asarray(rgb, dtype=np.float64) / 255.0 - 0.5)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        assert len(images) == len(boxes) and np.asarray(boxes).shape[1] == 4
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for img in images], axis=0)
        return self.vector_for_colour(mean)


class ExplodingEncoder(MeanColourEncoder):
    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        raise RuntimeError("kaboom at /secret/internal/path")


def png_b64(rgb: Sequence[int], size: int = 24) -> str:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = rgb
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def frame(rgb: Sequence[int] = RED) -> dict[str, Any]:
    return {"image_b64": png_b64(rgb), "bbox": [4, 4, 8, 8]}


@dataclass
class Setup:
    root: Path
    settings: Settings
    vectors: dict[int, np.ndarray]  # tracklet id -> stored embedding (VERSION only)
    procedure_of: dict[int, str]
    red_id: int
    other_version_id: int

    def exhaustive(
        self, query: np.ndarray, exclude: Set[int] = frozenset(), only: Set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Brute-force cosine ranking over the same vectors."""
        ids = [i for i in self.vectors if i not in exclude and (only is None or i in only)]
        q = query / np.linalg.norm(query)
        scores = {i: float(self.vectors[i] @ q) for i in ids}
        return sorted(scores.items(), key=lambda kv: -kv[1])

    def ids_of(self, uid: str) -> set[int]:
        return {i for i, p in self.procedure_of.items() if p == uid}


def unit_rows(rng: np.random.Generator, prefix: str, n: int) -> list[TrackletRow]:
    """``n`` rows ``<prefix>/t<j>`` of 8 frames with random unit embeddings."""
    return [
        random_row(rng, DIM, f"{prefix}/t{j}", 10 * j, 8, identity_label=f"{prefix}/polyp{j % 2}")
        for j in range(n)
    ]


def build_setup(root: Path) -> Setup:
    """Three procedures of random unit rows (one of them the red tracklet) and one of
    another encoder version in a SQLite store under ``root``, and an index snapshot."""
    settings = Settings(
        home=root, max_frames_per_request=MAX_FRAMES, max_k=MAX_K, max_image_bytes=20_000
    )
    store = Store(settings.database_url)
    rng = np.random.default_rng(0)
    fake = MeanColourEncoder()
    vectors: dict[int, np.ndarray] = {}
    procedure_of: dict[int, str] = {}
    red_id = -1
    for uid in PROCEDURES:
        rows = unit_rows(rng, uid, PER_PROCEDURE)
        if (
            uid == "proc/a"
        ):  # one tracklet whose embedding is what the fake encoder gives red frames
            rows[0] = TrackletRow(
                key="proc/a/red",
                start_frame=0,
                end_frame=3,
                n_frames=4,
                embedding=fake.vector_for_colour(RED),
            )
        ids = store.replace_procedure(uid, "test", "synthetic", VERSION, rows)
        for tid, row in zip(ids, rows, strict=True):
            vectors[tid] = np.asarray(row.embedding, dtype=np.float32)
            procedure_of[tid] = uid
        if uid == "proc/a":
            red_id = ids[0]
    (other_id,) = store.replace_procedure(
        "proc/old", "test", "synthetic", OTHER_VERSION, unit_rows(rng, "proc/old", 1)
    )
    # a real index snapshot on disk, which the service loads and catches up
    open_or_rebuild(settings.index_dir, store, VERSION, DIM, save=True)
    store.close()
    return Setup(root, settings, vectors, procedure_of, red_id, other_id)


def started(settings: Settings, encoder: Any, **client_kwargs: Any) -> TestClient:
    """A client of a new app with ``encoder`` injected (``None``: load ``settings.model_path``)."""
    app = create_app(settings)
    if encoder is not None:
        app.state.encoder = encoder  # used instead of loading settings.model_path
    return TestClient(app, **client_kwargs)


def search(client: TestClient, **body: Any) -> dict[str, Any]:
    """``POST /search`` with ``body``, which must succeed; the response body."""
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def assert_same_ranking(results: list[dict[str, Any]], expected: list[tuple[int, float]]) -> None:
    """The results are ``expected`` ``(id, score)`` in order (scores to 1e-5)."""
    assert [r["tracklet_id"] for r in results] == [i for i, _ in expected]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected], atol=1e-5)


def assert_error(r: Any, status: int, code: str, *in_message: str) -> str:
    """``r`` is an error of this status and code in the one error body, its message naming
    each of ``in_message``; returns the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for text in in_message:
        assert text in body["error"]["message"]
    return str(body["error"]["message"])
