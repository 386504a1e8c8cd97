"""polypindex.model.data.embedding: the one frame selection, the one whole-tracklet rule and
the one streaming crop path; polypindex.model.scoring.reid: the one re-ID decision."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import (
    FragmentConfig,
    PreprocessConfig,
    check_whole_tracklet,
    whole_tracklet,
)
from polypindex.model.data.embedding import (
    CropStream,
    embedding_settings,
    selected_frames,
    tracklet_fragments,
)
from polypindex.model.data.preprocess import crop_frames
from polypindex.model.scoring.pairs import PairEvidence
from polypindex.model.scoring.reid import decide, reid_score, same_polyp

PRE = PreprocessConfig(im_size=8, bbox_scale_factor=2.0)


def test_whole_tracklet_rule_and_its_check() -> None:
    training = FragmentConfig(stride=3, fragment_length=8, drop_last=False, max_frames=5)
    whole = whole_tracklet(training)
    assert whole == FragmentConfig(stride=3, fragment_length=-1, drop_last=False, max_frames=5)
    check_whole_tracklet(whole)
    with pytest.raises(ConfigError, match="must have fragment_length=-1"):
        check_whole_tracklet(training)
    with pytest.raises(ConfigError, match="must have fragment_length=-1"):
        selected_frames(20, training)
    assert selected_frames(10, FragmentConfig(stride=3, fragment_length=-1)).tolist() == [
        0,
        3,
        6,
        9,
    ]
    assert selected_frames(20, whole).tolist() == [0, 6, 9, 12, 18]  # 7 grid frames thinned to 5
    assert [f.tolist() for f in tracklet_fragments(20, training)] == [
        [0, 3, 6, 9, 12, 15, 18, 18]
    ]  # padded


def test_embedding_settings_cover_crops_and_frame_rule_only() -> None:
    base = embedding_settings(PRE, FragmentConfig(stride=2, fragment_length=8))
    assert base == embedding_settings(PRE, FragmentConfig(stride=2, fragment_length=4))
    assert base != embedding_settings(PRE, FragmentConfig(stride=3, fragment_length=8))
    assert base != embedding_settings(
        PreprocessConfig(im_size=8, bbox_scale_factor=3.0), FragmentConfig(stride=2)
    )


def test_crop_stream_decodes_each_frame_once_and_yields_when_complete() -> None:
    rng = np.random.default_rng(0)
    images = {f: rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for f in range(10, 20)}
    box = np.asarray([4.0, 5.0, 6.0, 5.0])
    first = (np.arange(10, 16), np.tile(box, (6, 1)))  # frames 10..15
    second = (np.arange(12, 20), np.tile(box + 1, (8, 1)))  # frames 12..19
    fragments = [[np.asarray([0, 2, 4])], [np.asarray([0, 3]), np.asarray([3, 6])]]
    reads: Counter[int] = Counter()

    def read(wanted: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        assert list(wanted) == sorted(wanted)
        for f in wanted:
            reads[f] += 1
            yield f, images[f]

    stream = CropStream([first, second], fragments, read, PRE)
    done_at = {}
    for frame, done in zip([10, 12, 14, 15, 18], stream, strict=True):
        for ti, seqs in done:
            done_at[ti] = (frame, seqs)
    assert set(reads.values()) == {1} and stream.decoded == 5 and stream.unfinished() == []
    assert done_at[0][0] == 14 and done_at[1][0] == 18
    (seq,) = done_at[0][1]
    np.testing.assert_array_equal(
        seq, crop_frames([images[f] for f in (10, 12, 14)], first[1][:3], PRE)
    )
    a, b = done_at[1][1]
    np.testing.assert_array_equal(a, crop_frames([images[12], images[15]], second[1][:2], PRE))
    np.testing.assert_array_equal(b[0], a[1])

    missing = CropStream([first], [fragments[0]], lambda wanted: iter(()), PRE)
    assert list(missing) == [] and missing.unfinished() == [0]


def test_reid_score_is_sigmoid_of_cosine_and_undecided_without_calibration() -> None:
    a = np.asarray([1.0, 0.0], dtype=np.float32)
    b = np.asarray([0.6, 0.8], dtype=np.float32)
    decision = decide(PairEvidence(float(a @ b), same_procedure=True), None)
    assert decision.similarity == pytest.approx(0.6)
    assert decision.answer == "uncertain" and decision.probability is None  # no calibration
    assert decide(PairEvidence(float(a @ (a * 2))), None).similarity == 1.0  # clipped
    scores = reid_score(np.asarray([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(scores, [0.268941, 0.5, 0.731059], atol=1e-6)
    assert same_polyp(scores, 0.5).tolist() == [False, True, True]
