"""polypindex.indexer.detections: MOTChallenge (10 and 7 columns, 1-based, -1 ids), the project
format behind its header, and every refusal naming the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypindex.indexer.detections import (
    detection_tracklets,
    frame_files_for,
    read_detections_csv,
)
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig


def _write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_mot10_detections_are_untracked_and_zero_based(tmp_path: Path) -> None:
    d = read_detections_csv(
        _write(tmp_path, "1,-1,10,20,30,40,0.9,-1,-1,-1\n2,-1,11,20,30,40,0.8,-1,-1,-1\n")
    )
    assert d.format == "motchallenge" and d.frame_base == 1
    assert d.frame_ids.tolist() == [0, 1] and d.track_ids is None
    assert d.boxes.tolist() == [[10, 20, 30, 40], [11, 20, 30, 40]]
    assert d.scores.tolist() == [0.9, 0.8] and d.lines.tolist() == [1, 2]


def test_mot10_ground_truth_and_mot7_tracker_output_carry_track_ids(tmp_path: Path) -> None:
    gt = read_detections_csv(_write(tmp_path, "1,3,10,20,30,40,1,1,1.0,-1\n5,4,1,2,3,4,1,1,1,-1\n"))
    assert gt.track_ids is not None and gt.track_ids.tolist() == ["3", "4"]
    assert gt.frame_ids.tolist() == [0, 4]
    # the 7-column tracker variant: today's reader shifted every column of it
    mot7 = read_detections_csv(_write(tmp_path, "1,7,10.5,20,30,40,0.5\n", "t.csv"))
    assert mot7.format == "motchallenge" and mot7.track_ids is not None
    assert mot7.track_ids.tolist() == ["7"] and mot7.frame_ids.tolist() == [0]
    assert mot7.boxes.tolist() == [[10.5, 20, 30, 40]] and mot7.scores.tolist() == [0.5]


def test_project_format_behind_its_header_and_the_bare_six_columns(tmp_path: Path) -> None:
    d = read_detections_csv(
        _write(tmp_path, "frame,x,y,w,h,score,track_id\n0,1,2,3,4,0.5,a\n1,1,2,3,4,0.5,a\n")
    )
    assert d.format == "polypindex" and d.frame_base == 0 and d.frame_ids.tolist() == [0, 1]
    assert d.track_ids is not None and d.track_ids.tolist() == ["a", "a"]
    bare = read_detections_csv(_write(tmp_path, "0,1,2,3,4,0.5\n", "b.csv"))
    assert bare.format == "polypindex" and bare.frame_ids.tolist() == [0] and bare.track_ids is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3,4,5\n", "line 1: 5 columns without a header; expected MOTChallenge"),
        ("1,2,3,4,5,6,7,8\n", "line 1: 8 columns without a header"),
        (
            "1,-1,1,2,3,4,0.9,-1,-1,-1\n2,-1,1,2,3,4,0.9\n",
            "line 2: 7 values, but the first line has 10",
        ),
        ("0,-1,1,2,3,4,0.9,-1,-1,-1\n", "line 1: frame '0' is not an integer from 1"),
        ("1.0,-1,1,2,3,4,0.9\n", "line 1: frame '1.0' is not an integer from 1"),
        ("1,-2,1,2,3,4,0.9\n", r"line 1: id '-2' is not an integer track id or -1"),
        ("1,2.5,1,2,3,4,0.9\n", r"line 1: id '2.5'"),
        ("1,1,1,2,0,4,0.9\n", "line 1: box .* positive width"),
        ("1,1,1,2,3,4,high\n", r"line 1: not a number: conf 'high'"),
        ("1,1,1,2,3,4,1,-1,-1,z\n", r"line 1: not a number: world z"),
        ("1,3,1,2,3,4,1\n2,-1,1,2,3,4,1\n", r"line 2: id -1 \(untracked\) in a file whose line 1"),
        # a project-format file with track ids but no header is not read shifted: refused
        ("0,10.5,20,30,40,0.9,t0\n", r"line 1: frame '0' .*needs its header line"),
        ("3,10.5,20,30,40,0.9,t0\n", r"line 1: id '10.5' .*needs its header line"),
        ("0,1,2,3,4,0.5\n1,1,2,3,4,0.5,x\n", "line 2: 7 values, expected 6"),
    ],
)
def test_headerless_files_that_fit_no_format_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        read_detections_csv(_write(tmp_path, text, "bad.csv"))
    assert "bad.csv" in str(info.value)


def test_mot_frames_folder_files_meet_the_zero_based_frames(tmp_path: Path) -> None:
    mot = read_detections_csv(_write(tmp_path, "1,-1,1,2,3,4,0.9\n"))
    files = {1: "img1/000001.jpg", 2: "img1/000002.jpg"}
    assert frame_files_for(mot, files) == {0: "img1/000001.jpg", 1: "img1/000002.jpg"}
    project = read_detections_csv(_write(tmp_path, "0,1,2,3,4,0.9\n", "p.csv"))
    assert frame_files_for(project, files) is files


def _mot_lines(n: int, tracked: bool) -> str:
    rows = []
    for f in range(1, n + 1):
        for k in range(2):
            tid = k + 1 if tracked else -1
            rows.append(f"{f},{tid},{4 + f + 30 * k},{8 + 10 * k},10,10,0.9,-1,-1,-1")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("linker", ["bytetrack", "greedy"])
def test_mot_detections_become_tracklets_with_either_linker(tmp_path: Path, linker: str) -> None:
    d = read_detections_csv(_write(tmp_path, _mot_lines(12, tracked=False)))
    out = detection_tracklets("p", d, TrackletConfig(min_tracklet_length=3), linker=linker)
    assert len(out) == 2 and all(t.frame_ids.tolist() == list(range(12)) for t in out)
    assert sorted(float(t.boxes[0, 0]) for t in out) == [5.0, 35.0]  # MOT frame 1 is frame 0


def test_mot_tracks_are_cut_by_the_gap_rule(tmp_path: Path) -> None:
    lines = _mot_lines(12, tracked=True).splitlines()
    lines = [row for row in lines if not row.startswith("6,")]  # frame 6 missing: a gap
    d = read_detections_csv(_write(tmp_path, "\n".join(lines) + "\n"))
    out = detection_tracklets("p", d, TrackletConfig(min_tracklet_length=3))
    assert [(t.start_frame, t.end_frame) for t in out] == [(0, 4), (0, 4), (6, 11), (6, 11)]
    assert np.all([t.identity_id is None for t in out])
