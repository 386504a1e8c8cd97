"""Trackleting (gap / IoU rule), the greedy IoU tracker, and fragmenting
(docs/method.md#tracklets)."""

from __future__ import annotations

import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.data.config import FragmentConfig, TrackletConfig
from polypindex.model.data.tracklets import (
    box_iou,
    box_iou_matrix,
    fragment_indices,
    link_detections,
    split_runs,
)


def _moving_boxes(n: int, x0: float = 10.0, step: float = 1.0) -> np.ndarray:
    return np.array([[x0 + step * i, 20.0, 30.0, 30.0] for i in range(n)], dtype=np.float32)


def test_box_iou_known_values() -> None:
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5, 0, 10, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 5, 5.0])) == 0.0
    m = box_iou_matrix(np.stack([a, a]), np.array([[5, 0, 10, 10.0]]))
    assert m.shape == (2, 1)
    np.testing.assert_allclose(m[:, 0], [50 / 150, 50 / 150])


@pytest.mark.parametrize(
    ("frames", "expected_lengths", "config"),
    [
        # contiguous frames, smooth motion: one run
        (list(range(10)), [10], TrackletConfig(min_tracklet_length=1)),
        # a gap of 2 frames > separation 1 splits
        ([0, 1, 2, 4, 5], [3, 2], TrackletConfig(min_tracklet_length=1)),
        # a gap of 2 with separation 2 does not split
        ([0, 1, 2, 4, 5], [5], TrackletConfig(separation_thresh=2, min_tracklet_length=1)),
        # short runs dropped
        ([0, 1, 2, 10, 11, 12, 13], [4], TrackletConfig(min_tracklet_length=4)),
        ([], [], TrackletConfig()),
    ],
)
def test_split_runs_gap_rule(
    frames: list[int], expected_lengths: list[int], config: TrackletConfig
) -> None:
    boxes = _moving_boxes(len(frames))
    runs = split_runs(np.array(frames, dtype=np.int64), boxes, config)
    assert [len(r) for r in runs] == expected_lengths


def test_split_runs_iou_rule() -> None:
    boxes = _moving_boxes(6)
    boxes[3:, 0] += 200  # the box jumps: IoU 0 with the previous one
    runs = split_runs(np.arange(6), boxes, TrackletConfig(min_tracklet_length=1))
    assert [r.tolist() for r in runs] == [[0, 1, 2], [3, 4, 5]]


def test_link_detections_two_interleaved_tracks() -> None:
    # Two polyps visible at once, far apart; detections given in shuffled order.
    n = 12
    a = _moving_boxes(n, x0=10)
    b = _moving_boxes(n, x0=200)
    frames = np.concatenate([np.arange(n), np.arange(n)])
    boxes = np.concatenate([a, b])
    perm = np.random.default_rng(0).permutation(len(frames))
    tracks = link_detections(frames[perm], boxes[perm], TrackletConfig(min_tracklet_length=5))
    assert len(tracks) == 2
    got = sorted(sorted(perm[t].tolist()) for t in tracks)
    assert got == [list(range(n)), list(range(n, 2 * n))]
    for t in tracks:  # each track sorted by frame
        assert np.all(np.diff(frames[perm][t]) == 1)


def test_link_detections_gap_starts_new_track() -> None:
    frames = np.array([0, 1, 2, 5, 6, 7])
    boxes = _moving_boxes(6)
    tracks = link_detections(frames, boxes, TrackletConfig(min_tracklet_length=1))
    assert [t.tolist() for t in tracks] == [[0, 1, 2], [3, 4, 5]]


def test_link_detections_rejects_mismatched_inputs() -> None:
    with pytest.raises(InvalidInputError, match="2 frame ids but 1 boxes"):
        link_detections([0, 1], np.zeros((1, 4)), TrackletConfig())


@pytest.mark.parametrize(
    ("n", "config", "expected"),
    [
        (32, FragmentConfig(stride=4, fragment_length=4), [[0, 4, 8, 12], [16, 20, 24, 28]]),
        (26, FragmentConfig(stride=4, fragment_length=4), [[0, 4, 8, 12]]),  # drop_last
        (
            26,
            FragmentConfig(stride=4, fragment_length=4, drop_last=False),
            [[0, 4, 8, 12], [16, 20, 24, 24]],
        ),
        (10, FragmentConfig(stride=3, fragment_length=-1), [[0, 3, 6, 9]]),
        (0, FragmentConfig(), []),
    ],
)
def test_fragment_indices(n: int, config: FragmentConfig, expected: list[list[int]]) -> None:
    assert [f.tolist() for f in fragment_indices(n, config)] == expected


def test_fragment_padding_repeats_last_frame() -> None:
    frags = fragment_indices(22, FragmentConfig(stride=4, fragment_length=4, drop_last=False))
    # subsampled: 0 4 8 12 16 20 -> [0 4 8 12], [16 20 20 20]
    assert [f.tolist() for f in frags] == [[0, 4, 8, 12], [16, 20, 20, 20]]


def test_fragment_whole_tracklet_capped_by_max_frames() -> None:
    (frag,) = fragment_indices(1000, FragmentConfig(stride=1, fragment_length=-1, max_frames=10))
    assert len(frag) == 10 and frag[0] == 0 and frag[-1] == 999
    assert np.all(np.diff(frag) > 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stride": 0}, "stride"),
        ({"fragment_length": 0}, "fragment_length"),
        ({"fragment_length": -2}, "fragment_length"),
    ],
)
def test_fragment_config_validation(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FragmentConfig(**kwargs)  # type: ignore[arg-type]
