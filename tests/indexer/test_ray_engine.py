"""The Ray engine on a local Ray instance (2 CPUs, no dashboard): the same rows as the
single-process pipeline with byte-equal embeddings, an idempotent rerun, a forced rerun
that replaces instead of duplicating. Skipped when ray[data] is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import helpers.indexing  # noqa: E402
from helpers.indexing import TRACKLETS, FakeEncoder, write_coco  # noqa: E402

from polypindex.indexer.pipeline import index_sources  # noqa: E402
from polypindex.indexer.ray_engine import index_with_ray  # noqa: E402
from polypindex.indexer.sources import coco_sources  # noqa: E402
from polypindex.indexer.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    tests_dir = str(Path(helpers.indexing.__file__).resolve().parents[1])
    ray.init(  # the workers import the test helpers (FakeEncoder) from tests/
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    yield
    ray.shutdown()


def _stored(store: Store) -> list[tuple[Any, ...]]:
    out = []
    for procedure in store.list_procedures():
        ids = store.tracklet_ids_for_procedure(procedure.uid)
        for _, rec in sorted(store.get_tracklets(ids).items()):
            out.append((procedure.uid, rec.key, rec.n_frames, rec.boxes, rec.embedding.tobytes()))
    return sorted(out)


def test_ray_gives_the_single_process_rows_and_reruns_idempotently(
    local_ray: None, tmp_path: Path
) -> None:
    data = write_coco(tmp_path / "data")
    sources = coco_sources(data, "test", TRACKLETS)
    single = Store(f"sqlite:///{tmp_path / 'single.sqlite'}")
    expected = index_sources(sources, single, tmp_path / "i1", FakeEncoder(), progress=False)

    store = Store(f"sqlite:///{tmp_path / 'ray.sqlite'}")
    report = index_with_ray(sources, store, tmp_path / "i2", FakeEncoder, actors=1, init=False)
    assert report.procedures_indexed == expected.procedures_indexed == 2
    assert (report.tracklets, report.frames) == (expected.tracklets, expected.frames)
    assert _stored(store) == _stored(single)  # same rows, byte-equal embeddings
    assert report.index_size == expected.index_size

    again = index_with_ray(sources, store, tmp_path / "i2", FakeEncoder, init=False)
    assert (again.procedures_indexed, again.procedures_skipped) == (0, 2)
    forced = index_with_ray(sources, store, tmp_path / "i2", FakeEncoder, force=True, init=False)
    assert forced.procedures_indexed == 2
    assert _stored(store) == _stored(single)  # replaced, not duplicated
    assert store.count_tracklets("fake-v1") == expected.tracklets
    assert forced.index_size == expected.index_size


def test_a_lost_procedure_is_embedded_by_the_rerun(local_ray: None, tmp_path: Path) -> None:
    """A run that stopped after the first procedure (as when a worker is lost before the
    second was committed): the rerun writes only the missing one."""
    data = write_coco(tmp_path / "data")
    sources = coco_sources(data, "test", TRACKLETS)
    store = Store(f"sqlite:///{tmp_path / 'ray.sqlite'}")
    index_with_ray(sources[:1], store, tmp_path / "idx", FakeEncoder, init=False)
    rerun = index_with_ray(sources, store, tmp_path / "idx", FakeEncoder, init=False)
    assert (rerun.procedures_indexed, rerun.procedures_skipped) == (1, 1)
    assert rerun.indexed_uids == (sources[1].uid,)
    single = Store(f"sqlite:///{tmp_path / 'single.sqlite'}")
    index_sources(sources, single, tmp_path / "i1", FakeEncoder(), progress=False)
    assert _stored(store) == _stored(single)
