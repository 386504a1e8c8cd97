"""polypindex.indexer.sources: detections CSV, video (PyAV, streamed), frames folders, data roots, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.indexing import (
    TRACKLETS,
    FakeEncoder,
    frame_pixels,
    write_csv,
    write_frames,
    write_video,
)

from polypindex.indexer.av_frames import VideoReadError
from polypindex.indexer.detections import read_detections_csv
from polypindex.indexer.generations import generation_dir, open_or_rebuild
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.sources import (
    PathNotAllowedError,
    check_in_roots,
    frames_source,
    stream_video,
    video_source,
)
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import ImageReadError, InvalidInputError

N = 12


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'store.sqlite'}")


def test_csv_with_and_without_header_and_track_ids(tmp_path: Path) -> None:
    with_header = read_detections_csv(write_csv(tmp_path / "a.csv", 3, track_ids=True))
    assert with_header.frame_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert with_header.track_ids is not None and with_header.track_ids.tolist()[:2] == ["t0", "t1"]
    np.testing.assert_allclose(with_header.boxes[1], [34, 18, 10, 10])
    (tmp_path / "b.csv").write_text("1,2,3,4,5,0.5\n2,2,3,4,5,0.5\n")
    bare = read_detections_csv(tmp_path / "b.csv")
    assert bare.track_ids is None and bare.lines.tolist() == [1, 2]
    (tmp_path / "c.csv").write_text("score,h,w,y,x,frame,extra\n0.5,5,4,3,2,7,zz\n")
    reordered = read_detections_csv(tmp_path / "c.csv")
    assert reordered.frame_ids.tolist() == [7] and reordered.boxes.tolist() == [[2, 3, 4, 5]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frame,x,y,w,score\n1,2,3,4,0.5\n", r"lacks column\(s\) \['h'\]"),
        ("1,2,3,4,0.5\n", "5 columns without a header"),
        ("frame,x,y,w,h,score\n1,2,3,4\n", "line 2: 4 values"),
        ("frame,x,y,w,h,score\n1,2,3,0,5,0.9\n", "line 2: box .* positive width"),
        ("frame,x,y,w,h,score\n1.5,2,3,4,5,0.9\n", "line 2: frame '1.5'"),
        ("frame,x,y,w,h,score\nA,2,3,4,5,0.9\n", "line 2: not a number"),
        ("", "empty"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=message) as info:
        read_detections_csv(tmp_path / "bad.csv")
    assert "bad.csv" in str(info.value)


def test_video_is_streamed_in_order_and_each_frame_decoded_once(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", N)
    got = list(stream_video(video, [5, 1, 5, 9]))
    assert [f for f, _ in got] == [1, 5, 9]
    for f, img in got:  # lossy codec: close to the drawn frame
        assert img.shape == (48, 64, 3) and np.abs(img.astype(int) - frame_pixels(f)).mean() < 8
    assert [f for f, _ in stream_video(video, [3], first_frame=1)] == [3]
    with pytest.raises(VideoReadError, match=r"ends after frame 11, but detections need frame 40"):
        list(stream_video(video, [2, 40]))


def test_index_a_video_and_a_frames_folder(store: Store, tmp_path: Path) -> None:
    video = write_video(tmp_path / "proc-v.mp4", N)
    frames = write_frames(tmp_path / "proc-f", N)
    untracked = write_csv(tmp_path / "d.csv", N)
    tracked = write_csv(tmp_path / "t.csv", N, track_ids=True)
    sources = [
        video_source(video, untracked, config=TRACKLETS),
        frames_source(frames, tracked, uid="proc-f", config=TRACKLETS),
    ]
    assert [len(s.tracklets) for s in sources] == [2, 2]  # two objects, linked by IoU / by track id
    assert sources[0].uid == "proc-v" and sources[0].tracklets[0].key == "proc-v/track/0"
    encoder = FakeEncoder()
    seen = []
    report = index_sources(
        sources, store, tmp_path / "idx", encoder, progress=False, on_progress=seen.append
    )
    assert report.procedures_indexed == 2 and report.tracklets == 4 and report.frames == 16
    assert report.images_decoded == 8  # 4 sampled frames per procedure, each decoded once
    # progress comes within a procedure too (per frame / tracklet), never goes back, and ends
    # with both procedures and all their tracklets done
    done = [p.procedures_done for p in seen]
    assert done == sorted(done) and {1, 2} <= set(done) and seen[-1].eta_s == 0.0
    assert [p.tracklets for p in seen] == sorted(p.tracklets for p in seen)
    assert seen[-1].tracklets == 4
    rec = store.get_tracklet(store.tracklet_ids_for_procedure("proc-v")[0])
    assert rec.identity_label is None and (rec.start_frame, rec.end_frame) == (0, N - 1)
    # the same object through both inputs embeds alike (lossy video vs JPEG frames)
    (v0, v1), (f0, f1) = (
        [store.get_tracklet(i).embedding for i in store.tracklet_ids_for_procedure(u)]
        for u in ("proc-v", "proc-f")
    )
    assert float(v0 @ f0) > 0.99 and float(v1 @ f1) > 0.99
    index = VectorIndex.load(generation_dir(tmp_path / "idx", "fake-v1"))
    assert sorted(index.ids().tolist()) == store.tracklet_ids("fake-v1").tolist()
    again = index_sources(sources, store, tmp_path / "idx", encoder, progress=False)
    assert again.procedures_skipped == 2 and store.count_tracklets() == 4


def test_truncated_video_is_a_clear_error_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "d.csv", 40, n_objects=1)
    # MP4 keeps its index at the end: a cut file does not even open
    data = write_video(tmp_path / "v.mp4", 40, n_objects=1).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=r"cannot open video .*cut\.mp4"):
        video_source(tmp_path / "cut.mp4", csv_path, config=TRACKLETS)
    # Matroska streams: a cut file opens, then ends before the frames the detections need
    data = write_video(tmp_path / "v.mkv", 40, n_objects=1).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    src = video_source(tmp_path / "cut.mkv", csv_path, config=TRACKLETS)
    with pytest.raises(VideoReadError, match=r"cut\.mkv"):
        index_sources([src], store, tmp_path / "idx", FakeEncoder(), progress=False)
    assert store.count_tracklets() == 0 and not store.list_procedures()
    assert not (tmp_path / "idx" / "thumbnails").exists()
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00 not a video at all")
    with pytest.raises(VideoReadError, match=r"garbage\.mp4"):
        video_source(tmp_path / "garbage.mp4", csv_path)


def test_boxes_outside_the_frame_and_missing_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 4)
    (tmp_path / "out.csv").write_text("frame,x,y,w,h,score\n0,1,1,5,5,0.9\n1,60,40,10,10,0.9\n")
    with pytest.raises(InvalidInputError, match=r"out\.csv, line 3: box .* outside the 64x48"):
        video_source(video, tmp_path / "out.csv")
    frames = write_frames(tmp_path / "f", 2)
    (tmp_path / "far.csv").write_text("frame,x,y,w,h,score\n0,1,1,5,5,0.9\n7,1,1,5,5,0.9\n")
    with pytest.raises(InvalidInputError, match="line 3: frame 7 has no image"):
        frames_source(frames, tmp_path / "far.csv")


def test_corrupt_jpeg_in_a_frames_folder(store: Store, tmp_path: Path) -> None:
    frames = write_frames(tmp_path / "f", N)
    (frames / "000004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    src = frames_source(frames, write_csv(tmp_path / "d.csv", N), config=TRACKLETS)
    with pytest.raises(ImageReadError, match=r"000004\.jpg"):
        index_sources([src], store, tmp_path / "idx", FakeEncoder(), progress=False)
    assert store.count_tracklets() == 0
    assert not (tmp_path / "idx" / "thumbnails").exists()


def test_paths_outside_the_data_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    assert check_in_roots(root / "a", [root]) == (root / "a").resolve()
    for bad in (tmp_path / "secret", root / ".." / "secret", root / "link", Path("/etc/passwd")):
        with pytest.raises(PathNotAllowedError, match="outside the configured data roots"):
            check_in_roots(bad, [root])
    with pytest.raises(PathNotAllowedError, match="no data roots"):
        check_in_roots(root, [])


def test_a_new_encoder_makes_a_new_generation_beside_the_old(store: Store, tmp_path: Path) -> None:
    from polypindex.indexer.generations import describe_generations
    from polypindex.indexer.pipeline import delete_procedure

    src = frames_source(
        write_frames(tmp_path / "f", N), write_csv(tmp_path / "d.csv", N), uid="P", config=TRACKLETS
    )
    index_sources([src], store, tmp_path / "idx", FakeEncoder("v1"), progress=False)
    report = index_sources([src], store, tmp_path / "idx", FakeEncoder("v2"), progress=False)
    assert report.procedures_indexed == 1  # not skipped: v2 has no rows of P yet
    gens = describe_generations(tmp_path / "idx", store)
    assert [(g["encoder_version"], g["stored"], g["snapshot"], g["in_sync"]) for g in gens] == [
        ("v1", 2, 2, True),
        ("v2", 2, 2, True),
    ]
    old = open_or_rebuild(tmp_path / "idx", store, "v1", 16)
    assert sorted(old.ids().tolist()) == store.tracklet_ids("v1").tolist()  # v1 still serves P
    assert len(delete_procedure("P", store, tmp_path / "idx")) == 4
    assert [g["snapshot"] for g in describe_generations(tmp_path / "idx", store)] == [0, 0]
