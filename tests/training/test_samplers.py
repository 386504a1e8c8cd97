"""Bag samplers (docs/method.md#samplers): rank distribution, temperature schedule, batch
layout, errors."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.training.bag_schedule import cosine_temperature, rank_probabilities
from polypindex.training.samplers import (
    FragmentIndex,
    IdentityBagSampler,
    KNearestBagSampler,
    TemporalTemperatureBagSampler,
    bag_noise_rate,
)


def _index(videos: dict[str, int], per_identity: int = 5) -> FragmentIndex:
    """Evenly spaced fragments per video; consecutive runs of ``per_identity`` share an identity."""
    video, position, identity = [], [], []
    for name, n in videos.items():
        video += [name] * n
        position += list(np.linspace(0.0, 1.0, n))
        identity += [f"{name}-{i // per_identity}" for i in range(n)]
    n_total = len(video)
    return FragmentIndex(
        video=np.asarray(video, dtype=object),
        position=np.asarray(position),
        tracklet=np.arange(n_total) // per_identity,
        identity=np.asarray(identity, dtype=object),
    )


@pytest.mark.parametrize(
    ("epoch", "max_epochs", "expected"),
    [
        (0, 50, 0.3),
        (49, 50, 12.0),
        (0, 1, 0.3),  # a one-epoch schedule stays at t_min
        (100, 50, 12.0),  # past the end: clamped
        (1, 3, 0.3 + (12.0 - 0.3) * 0.5),  # the midpoint of a cosine is the mean
    ],
)
def test_temperature_schedule(epoch: int, max_epochs: int, expected: float) -> None:
    sampler = TemporalTemperatureBagSampler(
        _index({"v": 10}), n_views=5, batch_size=10, max_epochs=max_epochs
    )
    assert sampler.temperature(epoch) == pytest.approx(expected, abs=1e-12)
    assert cosine_temperature(epoch, max_epochs, 0.3, 12.0) == pytest.approx(expected, abs=1e-12)


def test_temperature_is_monotone() -> None:
    temps = [cosine_temperature(e, 20, 0.3, 12.0) for e in range(20)]
    assert all(a < b for a, b in itertools.pairwise(temps))


@pytest.mark.parametrize(
    ("n_fragments", "temperature", "n_views"),
    [
        (12, 0.3, 2),
        (12, 2.0, 2),
        (12, 12.0, 2),
        (30, 5.0, 5),  # with K>1 the first-drawn member still follows exp(-rank/T)
    ],
)
def test_rank_frequencies_follow_exp_minus_rank_over_t(
    n_fragments: int, temperature: float, n_views: int
) -> None:
    index = _index({"v": n_fragments})
    sampler = TemporalTemperatureBagSampler(
        index,
        n_views=n_views,
        batch_size=n_views,
        t_min=temperature,
        t_max=temperature,
        max_epochs=1,
    )
    pos = np.asarray(index.position)
    # the anchor in the middle of the video has ties (two fragments per distance), so
    # use the first fragment: rank r is then fragment r
    counts: Counter[int] = Counter()
    n_epochs = 3000
    for epoch in range(n_epochs):
        bags, _ = sampler.build_bags(epoch)
        first = bags[bags[:, 0] == 0][0, 1]
        counts[int(np.argsort(np.abs(pos - pos[0]))[1:].tolist().index(first)) + 1] += 1
    expected = rank_probabilities(n_fragments - 1, temperature)
    observed = np.array([counts[r] for r in range(1, n_fragments)]) / n_epochs
    assert np.abs(observed - expected).max() < 0.035


def test_rank_probabilities_closed_form() -> None:
    p = rank_probabilities(3, 1.0)
    z = math.exp(-1) + math.exp(-2) + math.exp(-3)
    np.testing.assert_allclose(p, [math.exp(-1) / z, math.exp(-2) / z, math.exp(-3) / z])


def test_bags_stay_in_the_anchors_video_without_repeats() -> None:
    index = _index({"a": 15, "b": 12, "c": 9})
    sampler = TemporalTemperatureBagSampler(index, n_views=5, batch_size=20, max_epochs=5, seed=3)
    for epoch in range(5):
        bags, labels = sampler.build_bags(epoch)
        assert labels is None
        assert sorted(bags[:, 0].tolist()) == list(range(len(index)))  # every fragment anchors once
        for bag in bags:
            assert len(set(bag.tolist())) == 5
            assert len({index.video[i] for i in bag}) == 1


@pytest.mark.parametrize(
    ("videos", "n_views", "batch_size", "expected_batches", "last_batch_bags"),
    [
        ({"a": 20, "b": 20}, 5, 20, 10, 4),
        ({"a": 20, "b": 21}, 5, 20, 11, 1),
        ({"a": 10}, 2, 6, 4, 1),
        ({"a": 9, "b": 9}, 3, 18, 3, 6),
    ],
)
def test_batch_composition(
    videos: dict[str, int],
    n_views: int,
    batch_size: int,
    expected_batches: int,
    last_batch_bags: int,
) -> None:
    sampler = TemporalTemperatureBagSampler(
        _index(videos), n_views=n_views, batch_size=batch_size, max_epochs=3
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == expected_batches
    for batch in batches[:-1]:
        assert len(batch) == batch_size
    assert len(batches[-1]) == last_batch_bags * n_views
    for batch in batches:
        labels = [label for _, label in batch]
        # bag after bag: n_views consecutive items per label, labels 0..bags-1
        assert labels == [b for b in range(len(batch) // n_views) for _ in range(n_views)]


def test_set_epoch_rebuilds_bags_reproducibly() -> None:
    index = _index({"a": 30})

    def make() -> TemporalTemperatureBagSampler:
        return TemporalTemperatureBagSampler(index, n_views=5, batch_size=10, max_epochs=5, seed=7)

    s1, s2 = make(), make()
    first = list(s1)
    assert list(s2) == first
    s1.set_epoch(1)
    assert list(s1) != first
    s2.set_epoch(1)
    assert list(s2) == list(s1)


def test_knn_bags_are_the_nearest_in_time() -> None:
    index = _index({"a": 10})
    bags, _ = KNearestBagSampler(index, n_views=3, batch_size=3).build_bags()
    by_anchor = {int(b[0]): sorted(b[1:].tolist()) for b in bags}
    assert by_anchor[0] == [1, 2]
    assert by_anchor[9] == [7, 8]
    assert by_anchor[5] == [4, 6]


def test_identity_bags_share_the_label() -> None:
    index = _index({"a": 12, "b": 8}, per_identity=4)
    sampler = IdentityBagSampler(index, n_views=4, batch_size=8)
    for batch in sampler:
        by_label: dict[int, set[str]] = {}
        for frag, label in batch:
            by_label.setdefault(label, set()).add(str(index.identity[frag]))  # type: ignore[index]
        assert all(len(ids) == 1 for ids in by_label.values())
    assert bag_noise_rate(index, sampler, 2) == 0.0


@pytest.mark.parametrize(
    ("sampler_kwargs", "message"),
    [
        ({"n_views": 5, "batch_size": 62}, "multiple of n_views"),
        ({"n_views": 1, "batch_size": 10}, "n_views must be >= 2"),
        ({"n_views": 5, "batch_size": 10, "t_min": 2.0, "t_max": 1.0}, "t_min"),
    ],
)
def test_config_errors(sampler_kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TemporalTemperatureBagSampler(_index({"a": 20}), **sampler_kwargs)  # type: ignore[arg-type]


def test_small_video_error_names_video_and_setting() -> None:
    with pytest.raises(
        ConfigError, match=r"video 'short' has 3 fragment\(s\).*n_views=5.*lower n_views"
    ):
        TemporalTemperatureBagSampler(_index({"long": 20, "short": 3}), n_views=5, batch_size=10)
    skipped = TemporalTemperatureBagSampler(
        _index({"long": 20, "short": 3}), n_views=5, batch_size=10, small_videos="skip"
    )
    assert skipped.n_bags() == 20


def test_identity_sampler_needs_labels() -> None:
    index = _index({"a": 10})
    unlabelled = FragmentIndex(video=index.video, position=index.position, tracklet=index.tracklet)
    with pytest.raises(ConfigError, match="identity labels"):
        IdentityBagSampler(unlabelled, n_views=2, batch_size=4)
    with pytest.raises(InvalidInputError):
        bag_noise_rate(unlabelled, KNearestBagSampler(unlabelled, 2, 4), 1)


def test_fragment_index_validation() -> None:
    with pytest.raises(InvalidInputError, match="position"):
        FragmentIndex(
            video=np.array(["a", "a"]), position=np.array([0.0]), tracklet=np.array([0, 0])
        )
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        FragmentIndex(video=np.array(["a"]), position=np.array([1.5]), tracklet=np.array([0]))


@pytest.mark.parametrize(
    ("per_identity", "n_views", "expected"),
    [
        # knn bags of 3 over runs of 2: anchors at a run's edge get one foreign neighbour
        (2, 3, 0.5),
        (100, 3, 0.0),  # one identity per video: no noise
    ],
)
def test_bag_noise_rate_knn(per_identity: int, n_views: int, expected: float) -> None:
    index = _index({"a": 20}, per_identity=per_identity)
    sampler = KNearestBagSampler(index, n_views=n_views, batch_size=n_views)
    assert bag_noise_rate(index, sampler, 1) == pytest.approx(expected, abs=0.08)


def test_bag_noise_grows_with_temperature() -> None:
    index = _index({"a": 40, "b": 40}, per_identity=8)
    sampler = TemporalTemperatureBagSampler(
        index, n_views=5, batch_size=10, t_min=0.3, t_max=12.0, max_epochs=10
    )
    assert bag_noise_rate(index, sampler, [0]) < bag_noise_rate(index, sampler, [9])
