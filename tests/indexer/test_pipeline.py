"""indexer.pipeline on a tiny COCO dataset written here, with a fake (numpy) encoder."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers.indexing import TRACKLETS, FakeEncoder, linear_probe, write_coco

import polypindex.indexer.sources as sources
from polypindex.indexer.embed import Embedder
from polypindex.indexer.generations import generation_dir
from polypindex.indexer.pipeline import delete_procedure, index_dataset
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import (
    ConfigError,
    EncoderMismatchError,
    ImageReadError,
    InvalidInputError,
    ProcedureNotFoundError,
)
from polypindex.model.data.config import FragmentConfig


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "data", p1_labels=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'store.sqlite'}")


def _index_ids(index_dir: Path) -> list[int]:
    return sorted(VectorIndex.load(generation_dir(index_dir, "fake-v1")).ids().tolist())


def test_encoder_protocol_is_satisfied() -> None:
    encoder: Embedder = FakeEncoder()
    assert encoder.dim == 16


def test_index_then_reindex(dataset: Path, store: Store, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    encoder = FakeEncoder()
    report = index_dataset(dataset, "test", store, index_dir, encoder, TRACKLETS, progress=False)
    assert (report.procedures_indexed, report.procedures_skipped, report.tracklets) == (2, 0, 3)
    assert report.indexed_uids == ("ds:001", "ds:002")
    assert report.frames == 3 * 4  # 6 frames thinned to max_frames=4
    assert report.images_decoded == 4 + 4  # the two polyps of 001 share their frames
    assert report.index_size == 3 and report.encoder_version == "fake-v1"
    assert [p.uid for p in store.list_procedures()] == ["ds:001", "ds:002"]
    assert store.count_tracklets("fake-v1") == 3
    store_ids = store.tracklet_ids("fake-v1").tolist()
    assert _index_ids(index_dir) == store_ids

    records = store.get_tracklets(store_ids)
    by_key = {r.key: r for r in records.values()}
    assert set(by_key) == {"001/p1/0", "001/p2/0", "002/p3/0"}
    p1 = by_key["001/p1/0"]
    assert (p1.procedure_uid, p1.identity_label, p1.start_frame, p1.end_frame, p1.n_frames) == (
        "ds:001",
        "p1",
        0,
        5,
        6,
    )
    assert p1.size_mm == pytest.approx(4.0) and p1.histology == "adenoma"
    assert p1.boxes["frame_ids"] == list(range(6)) and p1.boxes["sampled_frame_ids"] == [0, 2, 3, 5]
    assert p1.boxes["first"] == [4.0, 8.0, 12.0, 12.0]
    assert p1.thumbnail_path and (index_dir / p1.thumbnail_path).is_file()
    index = VectorIndex.load(generation_dir(index_dir, "fake-v1"))
    assert index.preprocess == encoder.preprocess and index.fragment == encoder.fragment
    (hits,) = index.search(p1.embedding, 1)
    assert hits[0][0] == p1.id and hits[0][1] == pytest.approx(1.0, abs=1e-5)

    again = index_dataset(dataset, "test", store, index_dir, encoder, TRACKLETS, progress=False)
    assert (again.procedures_indexed, again.procedures_skipped, again.tracklets) == (0, 2, 0)
    assert store.count_tracklets() == 3 and _index_ids(index_dir) == store_ids

    forced = index_dataset(
        dataset, "test", store, index_dir, encoder, TRACKLETS, force=True, progress=False
    )
    assert (forced.procedures_indexed, forced.tracklets, forced.index_size) == (2, 3, 3)
    new_ids = store.tracklet_ids("fake-v1").tolist()
    assert store.count_tracklets() == 3 and not set(new_ids) & set(store_ids)
    assert _index_ids(index_dir) == new_ids


def test_each_image_is_decoded_once_per_procedure(
    dataset: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: Counter[str] = Counter()
    real = sources.read_image

    def counting(path: str | Path) -> np.ndarray:
        reads[str(path)] += 1
        return real(path)

    monkeypatch.setattr(sources, "read_image", counting)
    index_dataset(
        dataset, "test", store, tmp_path / "index", FakeEncoder(), TRACKLETS, progress=False
    )
    assert len(reads) == 8 and set(reads.values()) == {1}


def test_procedure_filter(dataset: Path, store: Store, tmp_path: Path) -> None:
    encoder = FakeEncoder()
    index = partial(index_dataset, dataset, "test", store, tmp_path / "i", encoder, TRACKLETS)
    report = index(progress=False, procedure_uids={"ds:002"})
    assert report.indexed_uids == ("ds:002",) and store.count_tracklets() == 1
    with pytest.raises(InvalidInputError, match="ds:999"):
        index(progress=False, procedure_uids=["ds:999"])


def test_corrupt_jpeg_names_the_file_and_writes_nothing_for_its_procedure(
    dataset: Path, store: Store, tmp_path: Path
) -> None:
    bad = dataset / "images" / "002_0003.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    index_dir = tmp_path / "index"
    with pytest.raises(ImageReadError, match=r"002_0003\.jpg"):
        index_dataset(dataset, "test", store, index_dir, FakeEncoder(), TRACKLETS, progress=False)
    assert store.has_procedure("ds:001", "fake-v1")  # committed before the bad procedure
    assert not store.has_procedure("ds:002")
    assert (
        store.count_tracklets() == 2
        and _index_ids(index_dir) == store.tracklet_ids("fake-v1").tolist()
    )


def test_delete_procedure(dataset: Path, store: Store, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    index_dataset(dataset, "test", store, index_dir, FakeEncoder(), TRACKLETS, progress=False)
    removed = delete_procedure("ds:001", store, index_dir)
    assert len(removed) == 2 and store.count_tracklets() == 1
    assert _index_ids(index_dir) == store.tracklet_ids("fake-v1").tolist()
    assert not set(removed) & set(_index_ids(index_dir))
    with pytest.raises(ProcedureNotFoundError):
        delete_procedure("ds:001", store, index_dir)


def test_indexing_needs_whole_tracklet_fragments(
    dataset: Path, store: Store, tmp_path: Path
) -> None:
    encoder = FakeEncoder()
    encoder.fragment = FragmentConfig(stride=1, fragment_length=2)  # type: ignore[misc]
    with pytest.raises(ConfigError, match="fragment_length=-1"):
        index_dataset(dataset, "test", store, tmp_path / "i", encoder, TRACKLETS, progress=False)
    assert store.count_tracklets() == 0


def test_probes_predict_at_indexing_and_are_checked(
    dataset: Path, store: Store, tmp_path: Path
) -> None:
    encoder = FakeEncoder()
    direction = np.random.default_rng(3).normal(size=encoder.dim).astype(np.float32)
    size = linear_probe("size", "fake-v1", direction, bias=0.1, temperature=2.0)
    histology = linear_probe("histology", "fake-v1", -direction)
    index_dataset(
        dataset,
        "test",
        store,
        tmp_path / "index",
        encoder,
        TRACKLETS,
        progress=False,
        probes=[size, histology],
    )
    ids = store.tracklet_ids("fake-v1").tolist()
    stored = store.predictions_for(ids)
    assert set(stored) == set(ids)
    for tid, record in store.get_tracklets(ids).items():
        z = float(direction @ record.embedding)
        p_size = 1 / (1 + np.exp(-(z + 0.1) / 2.0))
        got = stored[tid]["size"]
        assert got.probability == pytest.approx(p_size, abs=1e-6)
        assert got.label == ("diminutive" if p_size >= 0.5 else "non_diminutive")
        assert got.probe_version == size.version
        assert stored[tid]["histology"].probability == pytest.approx(1 / (1 + np.exp(z)), abs=1e-6)
    # a probe of another encoder, or two probes of one task, are refused before any work
    other = linear_probe("size", "other-encoder", direction)
    with pytest.raises(EncoderMismatchError, match="other-encoder"):
        index_dataset(
            dataset,
            "test",
            store,
            tmp_path / "i2",
            encoder,
            TRACKLETS,
            progress=False,
            probes=[other],
        )
    short = linear_probe("size", "fake-v1", direction)
    short.metadata["training"] = {"fragment": {"fragment_length": 8}}
    with pytest.raises(ConfigError, match="fragments of 8 frames"):
        index_dataset(
            dataset,
            "test",
            store,
            tmp_path / "i4",
            encoder,
            TRACKLETS,
            progress=False,
            probes=[short],
        )
    with pytest.raises(ConfigError, match="one probe per task"):
        index_dataset(
            dataset,
            "test",
            store,
            tmp_path / "i3",
            encoder,
            TRACKLETS,
            progress=False,
            probes=[size, size],
        )
