"""Grouping a procedure's tracklets into polyp entities: the temporal constraint is never
violated (property test), the result is deterministic and independent of input order,
and each method does what it says on small cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.grouping import (
    METHODS,
    TrackletSpan,
    cannot_link_matrix,
    group,
    one_per_tracklet,
    time_gap_groups,
    violations,
)


def _span(
    tid: int, start: int, length: int, box: tuple[float, float, float, float]
) -> TrackletSpan:
    return TrackletSpan(tid, np.arange(start, start + length), np.asarray(box, dtype=float))


@st.composite
def procedures(draw: st.DrawFn) -> tuple[list[TrackletSpan], np.ndarray]:
    n = draw(st.integers(1, 14))
    ids = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    spans = []
    for tid in ids:
        start = draw(st.integers(0, 200))
        length = draw(st.integers(1, 60))
        x, y = draw(st.sampled_from([0.0, 5.0, 100.0, 200.0])), draw(st.sampled_from([0.0, 100.0]))
        spans.append(_span(tid, start, length, (x, y, 40.0, 40.0)))
    # probabilities mostly high, so that merging is tempting everywhere
    values = draw(
        st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0]), min_size=n * n, max_size=n * n)
    )
    return spans, np.asarray(values, dtype=float).reshape(n, n)


@settings(max_examples=150, deadline=None)
@given(procedures(), st.sampled_from(METHODS), st.sampled_from([0.0, 0.5, 0.8]))
def test_the_temporal_constraint_is_never_violated(
    case: tuple[list[TrackletSpan], np.ndarray], method: str, cut: float
) -> None:
    spans, probs = case
    forbid = cannot_link_matrix(spans)
    labels = group(spans, probs, method, cut)
    assert violations(labels, forbid) == 0
    assert sorted(set(labels.tolist())) == list(range(len(set(labels.tolist()))))
    assert violations(time_gap_groups(spans, max_gap=1000), forbid) == 0


@settings(max_examples=60, deadline=None)
@given(procedures(), st.sampled_from(METHODS), st.randoms(use_true_random=False))
def test_grouping_is_deterministic_and_order_free(
    case: tuple[list[TrackletSpan], np.ndarray], method: str, rnd: object
) -> None:
    spans, probs = case
    sym = (probs + probs.T) / 2
    labels = group(spans, sym, method, 0.5)
    assert np.array_equal(labels, group(spans, sym, method, 0.5))
    perm = list(range(len(spans)))
    rnd.shuffle(perm)  # type: ignore[attr-defined]
    shuffled = group([spans[i] for i in perm], sym[np.ix_(perm, perm)], method, 0.5)
    by_id = {spans[i].id: int(shuffled[k]) for k, i in enumerate(perm)}
    assert [by_id[s.id] for s in spans] == labels.tolist()


def test_overlap_with_different_boxes_is_cannot_link_and_same_box_is_not() -> None:
    a = _span(1, 0, 10, (0, 0, 40, 40))
    b = _span(2, 5, 10, (100, 100, 40, 40))  # overlaps a in time, elsewhere
    c = _span(3, 5, 10, (2, 2, 40, 40))  # overlaps a in time, same place
    d = _span(4, 20, 10, (100, 100, 40, 40))  # after a
    forbid = cannot_link_matrix([a, b, c, d])
    assert forbid[0, 1] and not forbid[0, 2] and not forbid[0, 3] and forbid[1, 2]
    probs = np.ones((4, 4))
    for method in METHODS:
        labels = group([a, b, c, d], probs, method, 0.5)
        assert labels[0] != labels[1] and violations(labels, forbid) == 0


def test_per_frame_boxes_are_compared_frame_by_frame() -> None:
    frames = np.arange(10)
    moving = TrackletSpan(1, frames, np.stack([[f * 10.0, 0, 20, 20] for f in frames]))
    follower = TrackletSpan(2, frames, np.stack([[f * 10.0 + 1, 0, 20, 20] for f in frames]))
    still = TrackletSpan(3, frames, np.array([0.0, 0, 20, 20]))
    forbid = cannot_link_matrix([moving, follower, still])
    assert not forbid[0, 1] and forbid[0, 2]


def test_methods_on_a_small_case() -> None:
    # two polyps seen twice each, one after the other; A and B alternate in time
    spans = [_span(i, 100 * i, 50, (0, 0, 40, 40)) for i in range(4)]
    p = np.array(
        [
            [1.0, 0.1, 0.9, 0.2],
            [0.1, 1.0, 0.3, 0.8],
            [0.9, 0.3, 1.0, 0.6],
            [0.2, 0.8, 0.6, 1.0],
        ]
    )
    for method in METHODS:
        assert group(spans, p, method, 0.7).tolist() == [0, 1, 0, 1]
    # at a cut of 0.55: average linkage of {0,2} with {1,3} is 0.35, no merge;
    # single linkage (components) chains through the 0.6 edge
    assert group(spans, p, "average", 0.55).tolist() == [0, 1, 0, 1]
    assert group(spans, p, "components", 0.55).tolist() == [0, 0, 0, 0]
    assert one_per_tracklet(spans).tolist() == [0, 1, 2, 3]
    assert time_gap_groups(spans, max_gap=60).tolist() == [0, 0, 0, 0]
    assert time_gap_groups(spans, max_gap=40).tolist() == [0, 1, 2, 3]


def test_ties_are_broken_by_tracklet_id() -> None:
    spans = [_span(tid, 0, 5, (0, 0, 10, 10)) for tid in (30, 10, 20)]
    # 10 and 20 cannot both join 30 with 10? all pairs tie at 0.9; forbid 10-20
    forbid = np.zeros((3, 3), dtype=bool)
    forbid[1, 2] = forbid[2, 1] = True
    probs = np.full((3, 3), 0.9)
    labels = group(spans, probs, "average", 0.5, cannot_link=forbid)
    # the first merge is the tie with the smallest ids: (10, 30); 20 stays alone
    assert labels[0] == labels[1] != labels[2]


def test_bad_input() -> None:
    spans = [_span(1, 0, 5, (0, 0, 10, 10)), _span(1, 10, 5, (0, 0, 10, 10))]
    with pytest.raises(InvalidInputError, match="unique"):
        group(spans, np.ones((2, 2)))
    with pytest.raises(InvalidInputError, match="method"):
        group(spans[:1], np.ones((1, 1)), "kmeans")
    with pytest.raises(InvalidInputError, match=r"\(1, 1\)"):
        group(spans[:1], np.ones((2, 2)))
    with pytest.raises(InvalidInputError, match="boxes"):
        TrackletSpan(1, np.arange(3), np.zeros((2, 4)))
    assert group([], np.zeros((0, 0))).tolist() == []
