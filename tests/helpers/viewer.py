"""The viewer tests' world (tests/ui/): a tiny index built by the real pipeline (a COCO split, a frames
folder and a video, with thumbnails and size/histology predictions) under one home, and a
deterministic encoder that also embeds uploaded frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.indexing import (
    TRACKLETS,
    FakeEncoder,
    linear_probe,
    write_coco,
    write_csv,
    write_frames,
    write_video,
)
from polypindex.benchmarks.screenshots import serving
from polypindex.indexer.locations import anchors_for
from polypindex.indexer.pipeline import index_dataset, index_sources
from polypindex.indexer.sources import frames_source, video_source
from polypindex.indexer.store import Store
from polypindex.model.data.preprocess import preprocess_frames
from polypindex.model.scoring.probe import probe_path
from polypindex.service.app import create_app
from polypindex.service.settings import Settings


class ViewerEncoder(FakeEncoder):
    """:class:`FakeEncoder` that also embeds a query's raw frames (the service's protocol)."""

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        crops = preprocess_frames(images, np.asarray(boxes, dtype=np.float64), self.preprocess)
        return np.asarray(self.embed_sequences([crops])[0], dtype=np.float32)


@dataclass
class ViewerWorld:
    settings: Settings
    encoder: ViewerEncoder
    ids: dict[str, int]  # tracklet key -> id
    procedure_of: dict[int, str]  # tracklet id -> procedure uid

    def id_of(self, key: str) -> int:
        return self.ids[key]


def build_world(home: Path, *, anchors: bool = True) -> ViewerWorld:
    """Index ``ds:001`` / ``ds:002`` (COCO), ``frames-proc`` and ``video-proc`` under ``home``
    (sources stored relative to the data root; absolute as before that form existed
    without ``anchors``)."""
    settings = Settings(home=home, index_refresh_seconds=0)
    data = home / "data"
    coco = write_coco(data / "coco", p1_labels=True)
    write_frames(data / "frames", 12)
    write_csv(data / "dets.csv", 12, track_ids=True)
    write_video(data / "video.mp4", 12)
    encoder = ViewerEncoder()
    rng = np.random.default_rng(5)
    probes = [
        linear_probe(task, encoder.version, rng.normal(size=encoder.dim) * 4)
        for task in ("size", "histology")
    ]
    for probe in probes:
        probe.save(probe_path(settings.probes_folder, probe.task))
    store = Store(settings.database_url)
    try:
        common = {
            "progress": False,
            "probes": probes,
            "snapshot_every_s": 0.0,
            "anchors": anchors_for(settings) if anchors else None,
        }
        index_dataset(coco, "test", store, settings.index_dir, encoder, TRACKLETS, **common)  # type: ignore[arg-type]
        sources = [
            frames_source(data / "frames", data / "dets.csv", uid="frames-proc", config=TRACKLETS),
            video_source(data / "video.mp4", data / "dets.csv", uid="video-proc", config=TRACKLETS),
        ]
        index_sources(sources, store, settings.index_dir, encoder, **common)  # type: ignore[arg-type]
        ids: dict[str, int] = {}
        procedure_of: dict[int, str] = {}
        for p in store.list_procedures():
            for tid, rec in store.get_tracklets(store.tracklet_ids_for_procedure(p.uid)).items():
                ids[rec.key] = tid
                procedure_of[tid] = p.uid
    finally:
        store.close()
    return ViewerWorld(settings, encoder, ids, procedure_of)


@contextmanager
def live_server(settings: Settings, encoder: ViewerEncoder) -> Iterator[str]:
    """The app (``encoder`` injected) served by uvicorn on a free loopback port in a
    thread; yields its base URL."""
    app = create_app(settings)
    app.state.encoder = encoder
    with serving(app) as url:
        yield url
