"""A home copied or restored elsewhere still serves its strips and re-indexes without
change: sources are stored relative to their data root or the home
(indexer/locations.py, docs/store.md#sources-and-a-movable-home)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
from helpers.indexing import TRACKLETS
from helpers.service_api import assert_error, started
from helpers.viewer import ViewerWorld, build_world
from sqlalchemy import update

from polypindex.indexer.locations import (
    Anchors,
    anchors_for,
    resolve,
    store_source,
    to_stored,
)
from polypindex.indexer.pipeline import index_dataset
from polypindex.indexer.sources import PathNotAllowedError
from polypindex.indexer.store import Store
from polypindex.indexer.tables import ProcedureModel
from polypindex.service.settings import Settings


def test_sources_are_stored_relative_to_their_root(world: ViewerWorld) -> None:
    store = Store(world.settings.database_url)
    try:
        sources = {p.uid: p.source for p in store.list_procedures()}
    finally:
        store.close()
    assert sources["frames-proc"] == "frames:root:frames detections:root:dets.csv"
    assert sources["video-proc"] == "video:root:video.mp4 detections:root:dets.csv"
    coco = [s for uid, s in sources.items() if uid.startswith("ds:")]
    assert coco and all(s == "root:coco/annotations/instances_test.json" for s in coco)
    assert not any(str(world.settings.home) in s for s in sources.values())


def test_a_moved_home_serves_strips_and_reindexes(
    world: ViewerWorld, tmp_path_factory: pytest.TempPathFactory
) -> None:
    moved = tmp_path_factory.mktemp("restored") / "elsewhere"
    shutil.copytree(world.settings.home, moved)
    settings = Settings(home=moved, index_refresh_seconds=0)
    # the original folder is not read: hide it for the duration of the test
    hidden = world.settings.home.with_name("hidden-home")
    world.settings.home.rename(hidden)
    try:
        with started(settings, world.encoder) as c:
            for key, boxes in (("001/p1/0", "annotated"), ("frames-proc/track/0", "interpolated")):
                r = c.get(f"/tracklets/{world.id_of(key)}/strip")
                assert r.status_code == 200, r.text
                assert r.headers["x-boxes"] == boxes
            assert c.get(f"/tracklets/{world.id_of('001/p1/0')}/thumbnail").status_code == 200
        store = Store(settings.database_url)
        try:
            before = {p.uid: p.source for p in store.list_procedures()}
            n_before = store.count_tracklets(world.encoder.version)
            reindex = functools.partial(
                index_dataset,
                moved / "data" / "coco",
                "test",
                store,
                settings.index_dir,
                world.encoder,
                TRACKLETS,
                progress=False,
                anchors=anchors_for(settings),
            )
            report = reindex()
            assert (
                report.procedures_indexed == 0 and report.procedures_skipped > 0
            )  # already indexed: nothing redone
            forced = reindex(force=True)
            assert forced.procedures_indexed > 0  # re-indexed in the new place ...
            after = {p.uid: p.source for p in store.list_procedures()}
            assert after == before  # ... into the same procedures, stored the same way
            assert store.count_tracklets(world.encoder.version) == n_before
        finally:
            store.close()
    finally:
        hidden.rename(world.settings.home)


def test_legacy_absolute_sources_are_still_read(tmp_path: Path) -> None:
    """A store written before the relative form keeps its absolute paths; they still read."""
    legacy = build_world(tmp_path / "home", anchors=False)
    store = Store(legacy.settings.database_url)
    try:
        sources = {p.uid: p.source for p in store.list_procedures()}
    finally:
        store.close()
    assert sources["frames-proc"].startswith(f"frames:{legacy.settings.home}")
    with started(legacy.settings, legacy.encoder) as c:
        r = c.get(f"/tracklets/{legacy.id_of('frames-proc/track/0')}/strip")
        assert r.status_code == 200


def test_a_stored_relative_path_never_climbs_out(tmp_path: Path) -> None:
    roots = [tmp_path / "root"]
    for bad in ("root:../etc/passwd", "root:/etc/passwd", "home:../x", "root:a\x00b"):
        with pytest.raises(PathNotAllowedError):
            resolve(bad, tmp_path, roots)
    with pytest.raises(PathNotAllowedError, match="no data roots"):
        resolve("root:a.json", tmp_path, [])
    with pytest.raises(PathNotAllowedError, match="no home"):
        resolve("home:a.json", None, roots)


def test_the_first_root_holding_a_path_wins_then_the_home(tmp_path: Path) -> None:
    home, a, b = tmp_path / "home", tmp_path / "home" / "data", tmp_path / "b"
    for folder in (a, b, home / "other"):
        folder.mkdir(parents=True, exist_ok=True)
    anchors = Anchors(home, (a, b))
    assert to_stored(a / "x.json", home, anchors.roots) == "root:x.json"
    assert to_stored(b / "y" / "x.json", home, anchors.roots) == "root:y/x.json"
    assert to_stored(home / "other" / "x.json", home, anchors.roots) == "home:other/x.json"
    assert to_stored(tmp_path / "z.json", home, anchors.roots) == str(tmp_path / "z.json")
    # read back: under the first root where it exists
    (b / "y").mkdir()
    (b / "y" / "x.json").write_text("{}")
    assert resolve("root:y/x.json", home, anchors.roots) == b / "y" / "x.json"
    assert store_source(f"frames:{a / 'f'} detections:{b / 'd.csv'}", anchors) == (
        "frames:root:f detections:root:d.csv"
    )
    assert store_source(f"dicom:{a / 's.dcm'} detections:{a / 'd.txt'}", anchors) == (
        "dicom:root:s.dcm detections:root:d.txt"
    )
    assert store_source("root:x.json", anchors) == "root:x.json"  # already stored: kept


def test_a_strip_of_a_forged_source_is_a_clean_409(world: ViewerWorld, tmp_path: Path) -> None:
    """A stored value that would leave its root is refused like a missing file."""
    home = tmp_path / "forged"
    shutil.copytree(world.settings.home, home)
    settings = Settings(home=home, index_refresh_seconds=0)
    store = Store(settings.database_url)
    try:
        with store.sessions.begin() as s:  # what a tampered row would hold
            s.execute(
                update(ProcedureModel)
                .where(ProcedureModel.uid == "frames-proc")
                .values(source="frames:root:../../etc detections:root:dets.csv")
            )
    finally:
        store.close()
    with started(settings, world.encoder) as c:
        message = assert_error(
            c.get(f"/tracklets/{world.id_of('frames-proc/track/0')}/strip"),
            409,
            "frames_unavailable",
        )
        assert str(home) not in message
