"""polypindex.model.data.tracklets linkers: ByteTrack (the `trackers` package) by default, the greedy
IoU tracker as an option, clear errors for an unknown linker or a missing package."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import DETECTION_SEPARATION_THRESH, bytetrack_tracks, link

CONFIG = TrackletConfig(min_tracklet_length=5)


def _two_objects(n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames, boxes = [], []
    for f in range(n):
        for k in range(2):
            frames.append(f)
            boxes.append([10 + 2 * f + 60 * k, 10 + 20 * k, 20, 20])
    perm = np.random.default_rng(0).permutation(len(frames))
    return np.asarray(frames)[perm], np.asarray(boxes, float)[perm], np.full(len(frames), 0.9)


@pytest.mark.parametrize("linker", ["bytetrack", "greedy"])
def test_both_linkers_find_two_whole_tracks(linker: str) -> None:
    frames, boxes, scores = _two_objects()
    runs = link(frames, boxes, scores, CONFIG, linker)
    assert len(runs) == 2
    for run in runs:
        assert frames[run].tolist() == list(range(20))  # the first box kept, each frame once
        assert len({float(boxes[i, 1]) for i in run}) == 1  # one object per run


def test_bytetrack_bridges_a_missed_detection_the_cut_then_splits() -> None:
    frames, boxes, scores = _two_objects()
    keep = ~((frames == 10) & (boxes[:, 1] == 10))  # object 0 missed in frame 10
    tracks = bytetrack_tracks(frames[keep], boxes[keep], scores[keep], CONFIG)
    assert sorted(len(m) for m in tracks.values()) == [19, 20]  # one id across the miss
    runs = link(frames[keep], boxes[keep], scores[keep], CONFIG)
    assert sorted(len(r) for r in runs) == [9, 10, 20]  # the gap rule cuts at the miss


@pytest.mark.parametrize("missing", ["trackers", "supervision"])
def test_unknown_linker_and_missing_package_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    frames, boxes, scores = _two_objects()
    with pytest.raises(ConfigError, match="unknown linker 'sort'; known: bytetrack, greedy"):
        link(frames, boxes, scores, CONFIG, "sort")
    real_import = builtins.__import__

    def without(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == missing or name.startswith(f"{missing}."):
            raise ImportError(f"No module named {missing!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(ConfigError, match=r"polypindex\[tracking\].*--no-deps.*linker='greedy'"):
        link(frames, boxes, scores, CONFIG)
    assert len(link(frames, boxes, scores, CONFIG, "greedy")) == 2  # no dependency


def test_trackers_gives_a_new_tracks_first_box_no_id() -> None:
    """Why bytetrack_tracks claims spawning boxes itself: the package answers the box that
    starts a track with -1, even with minimum_consecutive_frames=1 (should this fail, a
    newer ``trackers`` gives that box its id and ``_spawn_box`` finds nothing to claim)."""
    import supervision as sv
    from trackers import ByteTrackTracker

    tracker = ByteTrackTracker(minimum_consecutive_frames=1)
    conf = np.array([0.9], dtype=np.float32)
    box = np.array([[10.0, 10.0, 30.0, 30.0]], dtype=np.float32)
    first = tracker.update(sv.Detections(xyxy=box, confidence=conf))
    second = tracker.update(sv.Detections(xyxy=box + 1.0, confidence=conf))
    assert first.tracker_id is not None and first.tracker_id.tolist() == [-1]
    assert second.tracker_id is not None and second.tracker_id.tolist() == [0]


def test_bytetrack_claims_spawning_boxes_only_for_tracks_that_live() -> None:
    frames, boxes, scores = _two_objects()
    # a lone confident box (spawns a track that is never matched) and a two-box track
    frames = np.concatenate([frames, [5, 12, 13]])
    boxes = np.concatenate([boxes, [[250, 200, 20, 20], [250, 10, 20, 20], [251, 10, 20, 20]]])
    scores = np.concatenate([scores, [0.95, 0.95, 0.95]])
    tracks = bytetrack_tracks(frames, boxes, scores, CONFIG)
    members = sorted(sorted(m.tolist()) for m in tracks.values())
    n = len(frames)
    assert [n - 2, n - 1] in members  # the short track keeps the box it started from
    assert all(n - 3 not in m for m in members)  # the lone box belongs to no track
    assert sorted(len(m) for m in members) == [2, 20, 20]


def test_bytetrack_refuses_scores_that_are_no_confidences(caplog: pytest.LogCaptureFixture) -> None:
    frames, boxes, scores = _two_objects()
    for bad in (scores * 100, scores - 1.0, np.where(frames == 3, np.nan, scores)):
        with pytest.raises(InvalidInputError, match=r"confidences in \[0, 1\].*greedy"):
            link(frames, boxes, bad, CONFIG)
    # all below the activation threshold: no track at all, and a warning saying why
    with caplog.at_level(logging.WARNING, logger="polypindex.model.data.tracklets"):
        assert link(frames, boxes, scores * 0.7, CONFIG) == []
    assert "track activation threshold" in caplog.text
    assert len(link(frames, boxes, scores * 0.7, CONFIG, "greedy")) == 2


@pytest.mark.parametrize("linker", ["bytetrack", "greedy"])
def test_the_detection_gap_rule_keeps_tracks_whole_across_misses(linker: str) -> None:
    frames, boxes, scores = _two_objects(60)
    missed = np.random.default_rng(1).random(len(frames)) < 0.15
    keep = ~missed | (frames == 0) | (frames == 59)
    frames, boxes, scores = frames[keep], boxes[keep], scores[keep]
    cut = link(frames, boxes, scores, CONFIG, linker)  # the annotated default: 1
    config = TrackletConfig(separation_thresh=DETECTION_SEPARATION_THRESH, min_tracklet_length=5)
    whole = link(frames, boxes, scores, config, linker)
    assert len(cut) > 4
    assert len(whole) == 2
    assert sorted(len(r) for r in whole) == sorted(int(np.sum(boxes[:, 1] == y)) for y in (10, 30))
