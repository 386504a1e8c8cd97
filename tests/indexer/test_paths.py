"""Paths and ids (issue 24): every way a path cannot be resolved is an InvalidInputError
naming the field; a file checked inside the data roots and swapped for a symlink out of
them before it is read is refused; an outside COCO ``file_name`` is refused the same
whether it exists or not; one UID limit, the store's column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.indexing import write_coco, write_csv, write_frames

from polypindex.indexer import input_checks, sources
from polypindex.indexer.input_checks import MAX_UID_LENGTH, check_uid, resolve_input
from polypindex.indexer.sources import (
    PathNotAllowedError,
    check_in_roots,
    coco_sources,
    frames_source,
    open_inside,
    video_source,
)
from polypindex.indexer.tables import ProcedureModel
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.service import schemas


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "roots" / "r1"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda root: "~nosuchuser-xyz/data", "'~' must name an existing user"),
        (lambda root: str(root / ("a" * 256)), "longer than 255 bytes"),
        (lambda root: str(root / ("é" * 128)), "longer than 255 bytes"),  # 256 bytes
        (lambda root: str(root) + ("/" + "b" * 200) * 21, "longer than 4095 bytes"),
    ],
)
def test_unresolvable_paths_name_the_field(root: Path, make: object, says: str) -> None:
    path = make(root)  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match=says) as caught:
        check_in_roots(path, [root], "folder")
    assert str(caught.value).startswith("folder: ") and str(root) not in str(caught.value)
    assert not isinstance(caught.value, PathNotAllowedError)


def test_a_symlink_loop_in_a_data_root_names_the_field(root: Path) -> None:
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(InvalidInputError, match=r"^root: the path runs into a symlink loop"):
        check_in_roots(root / "loop" / "images", [root], "root")
    with pytest.raises(InvalidInputError, match="symlink loop"):
        resolve_input(root / "loop", "video")


def test_a_255_byte_component_is_fine(root: Path) -> None:
    name = root / ("c" * 255)
    assert check_in_roots(name, [root], "root") == name


def _swap(link: Path, target: Path) -> None:
    link.unlink()
    link.symlink_to(target)


def test_a_frame_swapped_for_an_outside_symlink_after_the_check_is_not_read(
    root: Path, tmp_path: Path
) -> None:
    frames = write_frames(root / "frames_real", 6)
    folder = root / "frames"
    folder.mkdir()
    for f in sorted(frames.iterdir()):  # symlinks inside the roots: allowed
        (folder / f.name).symlink_to(f)
    secret = write_frames(tmp_path / "outside", 6)
    csv = write_csv(root / "det.csv", 6)
    source = frames_source(folder, csv, roots=[root], config=TrackletConfig(min_tracklet_length=3))
    _swap(folder / "000002.jpg", secret / "000002.jpg")  # after the job's check
    read: list[int] = []
    with pytest.raises(PathNotAllowedError, match="outside the configured data roots"):
        for frame, pixels in source.frames(range(6)):
            assert isinstance(pixels, np.ndarray)
            read.append(frame)
    assert read == [0, 1]  # the swapped file was never decoded


def test_a_coco_image_swapped_after_the_check_is_not_read(root: Path, tmp_path: Path) -> None:
    dataset = write_coco(root / "coco")
    secret = write_coco(tmp_path / "secret")
    (sources,) = [
        s
        for s in coco_sources(dataset, "test", TrackletConfig(min_tracklet_length=3), roots=[root])
        if s.uid.endswith(":002")
    ]
    image = dataset / "images" / "002_0001.jpg"
    image.unlink()
    image.symlink_to(secret / "images" / "002_0001.jpg")
    with pytest.raises(PathNotAllowedError, match="outside the configured data roots"):
        list(sources.frames(range(6)))


def test_a_folder_swapped_between_the_check_and_the_open_is_refused(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window itself: the checked (resolved) path's folder becomes a symlink out of
    the roots after the check, before the open; the open descriptor says so."""
    folder = write_frames(root / "frames", 6)
    secret = write_frames(tmp_path / "outside", 6)
    source = frames_source(
        folder, write_csv(root / "det.csv", 6), roots=[root], config=TrackletConfig()
    )
    real_check = sources.check_in_roots

    def check_then_swap(path: object, roots: object, what: str = "") -> Path:
        checked = real_check(path, roots, what)  # type: ignore[arg-type]
        if checked.name == "000003.jpg":
            shutil.move(folder, root / "moved")
            folder.symlink_to(secret, target_is_directory=True)
        return checked

    monkeypatch.setattr(sources, "check_in_roots", check_then_swap)
    read = []
    with pytest.raises(PathNotAllowedError, match="changed after it was checked"):
        read.extend(frame for frame, _ in source.frames(range(6)))
    assert read == [0, 1, 2]


def test_open_inside_reads_a_file_inside(root: Path) -> None:
    (root / "a.txt").write_bytes(b"inside")
    (root / "link.txt").symlink_to(root / "a.txt")
    with open_inside(root / "link.txt", [root], "file") as f:
        assert f.read() == b"inside"


def _coco_with_file_names(root: Path, elsewhere: Path, name: str, exists: bool) -> Path:
    inside = root / name
    shutil.copytree(elsewhere / "annotations", inside / "annotations")
    (inside / "images").mkdir()
    ann = next((inside / "annotations").glob("*.json"))
    data = json.loads(ann.read_text())
    for image in data["images"]:
        real = (elsewhere / "images" / image["file_name"]).resolve()
        image["file_name"] = str(real if exists else real.with_name("missing_" + real.name))
    ann.write_text(json.dumps(data))
    return inside


def test_an_outside_file_name_is_refused_alike_whether_it_exists_or_not(
    root: Path, tmp_path: Path
) -> None:
    elsewhere = write_coco(tmp_path / "elsewhere")
    messages = []
    for exists in (True, False):
        inside = _coco_with_file_names(root, elsewhere, f"in_{exists}", exists)
        with pytest.raises(PathNotAllowedError) as caught:
            coco_sources(inside, "test", roots=[root])
        messages.append(str(caught.value).replace("missing_", ""))
    assert messages[0] == messages[1] and "outside" in messages[0]


def test_one_uid_limit_the_store_s_column() -> None:
    column = ProcedureModel.__table__.c.uid.type.length  # type: ignore[attr-defined]
    assert MAX_UID_LENGTH == column == schemas.MAX_UID_LENGTH
    assert check_uid("u" * column) == "u" * column
    for bad in ("", "u" * (column + 1), "a\x00b", "tab\there"):
        with pytest.raises(InvalidInputError):
            check_uid(bad)


def test_the_job_models_use_the_same_uid_limit() -> None:
    kinds_base = pytest.importorskip("polypindex.indexer.kinds.base")  # the kinds registry
    assert kinds_base.MAX_UID_LENGTH == MAX_UID_LENGTH


def test_a_coco_dataset_id_making_an_over_long_uid_is_refused_at_indexing(root: Path) -> None:
    dataset = write_coco(root / "coco")
    ann = dataset / "annotations" / "instances_test.json"
    data = json.loads(ann.read_text())
    for image in data["images"]:
        image["dataset_id"] = "d" * 604  # uid "d…d:001": 608 characters
    ann.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=f"1 to {MAX_UID_LENGTH} characters long, not 608"):
        coco_sources(dataset, "test", roots=[root])


def test_opened_path_names_the_real_file(root: Path) -> None:
    (root / "f").write_bytes(b"x")
    (root / "l").symlink_to(root / "f")
    with open(root / "l", "rb") as f:
        assert input_checks.opened_path(f.fileno()) in (None, (root / "f").resolve())


def test_a_video_is_read_inside_the_roots_and_refused_once_swapped_out(
    root: Path, tmp_path: Path
) -> None:
    from helpers.indexing import write_video

    real = write_video(root / "real.mp4", 6)
    secret = write_video(tmp_path / "secret.mp4", 6)
    link = root / "video.mp4"
    link.symlink_to(real)
    source = video_source(link, write_csv(root / "det.csv", 6), roots=[root])
    assert [frame for frame, _ in source.frames([0, 3])] == [0, 3]
    _swap(link, secret)
    with pytest.raises(PathNotAllowedError, match="video lies outside"):
        list(source.frames([0]))
