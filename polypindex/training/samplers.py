"""Bag samplers (docs/method.md#samplers): which fragments are treated as positives of each other.

A *bag* is an anchor fragment plus ``n_views - 1`` other fragments believed to show
the same polyp. Samplers are batch samplers: each batch is a list of
``(fragment index, bag label)`` pairs, ``batch_size // n_views`` bags of ``n_views``
items each, laid out bag after bag. Items sharing a bag label are positives of each
other (:func:`training.losses.mil_nce`). Every fragment is the anchor of one bag per
epoch; bags are shuffled and packed into batches; :meth:`set_epoch` rebuilds them
(Lightning calls it at the start of each epoch).

- :class:`TemporalTemperatureBagSampler`: members drawn from the anchor's video with
  probability ∝ exp(−rank / T), T on a cosine schedule (the method).
- :class:`KNearestBagSampler`: the ``n_views - 1`` nearest fragments in time.
- :class:`IdentityBagSampler`: fragments with the anchor's identity label (the
  supervised upper bound; bag label = identity, so two bags of one polyp merge).

They are chosen by name from :data:`SAMPLERS` (``TrainConfig.sampler``); adding one is
a builder function decorated with :func:`register_sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.training.bag_schedule import T_SCHEDULES as T_SCHEDULES
from polypindex.training.bag_schedule import cosine_temperature as cosine_temperature
from polypindex.training.bag_schedule import rank_probabilities as rank_probabilities

SmallVideoPolicy = Literal["raise", "skip"]


@dataclass(frozen=True, eq=False)
class FragmentIndex:
    """Per-fragment metadata the samplers need, aligned arrays of length F.

    Attributes:
        video: (F,) the fragment's video (``sequence_id`` string or an int code).
        position: (F,) float in [0, 1], the fragment's centre frame normalised over
            its video's annotated frame range.
        tracklet: (F,) int, the tracklet the fragment was cut from.
        identity: (F,) str identity labels, or ``None`` when unknown. Only the
            identity sampler and :func:`bag_noise_rate` read it.
    """

    video: np.ndarray
    position: np.ndarray
    tracklet: np.ndarray
    identity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.video)
        lengths = {"position": len(self.position), "tracklet": len(self.tracklet)}
        if self.identity is not None:
            lengths["identity"] = len(self.identity)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise InvalidInputError(f"FragmentIndex: video has {n} entries but {bad}")
        pos = np.asarray(self.position, dtype=np.float64)
        if n and (not np.all(np.isfinite(pos)) or pos.min() < 0.0 or pos.max() > 1.0):
            raise InvalidInputError("FragmentIndex: positions must be finite and within [0, 1]")

    def __len__(self) -> int:
        return len(self.video)

    def video_groups(self) -> dict[str, np.ndarray]:
        """Fragment indices per video (keys are ``str(video)``), in index order."""
        keys = np.asarray([str(v) for v in self.video])
        return {str(k): np.flatnonzero(keys == k) for k in np.unique(keys)}


Batch = list[tuple[int, int]]


class BagSampler:
    """Base class: builds one epoch of bags and packs them into batches.

    Subclasses implement :meth:`build_bags` and :meth:`n_bags`.
    """

    def __init__(
        self, index: FragmentIndex, n_views: int = 5, batch_size: int = 60, seed: int = 0
    ) -> None:
        if n_views < 2:
            raise ConfigError(
                f"n_views must be >= 2 (an anchor and at least one positive), got {n_views}"
            )
        if batch_size <= 0 or batch_size % n_views != 0:
            raise ConfigError(
                f"batch_size ({batch_size}) must be a positive multiple of n_views ({n_views}): "
                f"set batch_size to e.g. {max(1, batch_size // n_views) * n_views} or change n_views"
            )
        self.index = index
        self.n_views = n_views
        self.batch_size = batch_size
        self.bags_per_batch = batch_size // n_views
        self.seed = seed
        self.epoch = 0
        self.num_replicas = 1
        self.rank = 0

    def set_distributed(self, num_replicas: int, rank: int) -> None:
        """Shard batches across ``num_replicas`` processes (DDP): this process (``rank``)
        iterates batches ``rank, rank + num_replicas, ...``; every process gets the same
        number of batches (the remainder is dropped).

        Raises:
            ConfigError: fewer batches per epoch than processes.
        """
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"need 0 <= rank < num_replicas, got rank={rank}, {num_replicas}")
        total = math.ceil(self.n_bags() / self.bags_per_batch)
        if total < num_replicas:
            raise ConfigError(
                f"only {total} batch(es) of {self.bags_per_batch} bags per epoch for {num_replicas} "
                f"processes: lower batch_size (or devices / num_nodes), or add data"
            )
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose bags the next iteration yields (bags are rebuilt)."""
        self.epoch = int(epoch)

    def _rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, salt])

    def build_bags(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """One epoch's bags (default: the current epoch).

        Returns:
            ``bags`` (n_bags, n_views) fragment indices, anchor first; ``labels``
            (n_bags,) global bag labels, or ``None`` when labels are local to a batch.
        """
        raise NotImplementedError

    def n_bags(self) -> int:
        raise NotImplementedError

    def batches(self) -> list[Batch]:
        """This epoch's batches: bags shuffled, packed ``bags_per_batch`` at a time.

        Labels are ``0..bags_per_batch-1`` within a batch unless the sampler gives
        global labels (identity bags).
        """
        bags, labels = self.build_bags()
        order = self._rng(salt=1).permutation(len(bags))
        out: list[Batch] = []
        for start in range(0, len(order), self.bags_per_batch):
            chunk = order[start : start + self.bags_per_batch]
            batch: Batch = []
            for local, b in enumerate(chunk):
                label = int(labels[b]) if labels is not None else local
                batch.extend((int(f), label) for f in bags[b])
            out.append(batch)
        return out

    def __iter__(self) -> Iterator[Batch]:
        # A generator: the bags are built at the first ``next``, after the epoch is set.
        batches = self.batches()
        if self.num_replicas > 1:
            batches = batches[self.rank : len(self) * self.num_replicas : self.num_replicas]
        yield from batches

    @property
    def sampler(self) -> _EpochSetter:
        """What Lightning's per-epoch ``set_epoch`` reaches (``batch_sampler.sampler``), so
        the epoch is set before every epoch, also in a run resumed from a checkpoint."""
        return _EpochSetter(self)

    def __len__(self) -> int:
        """Batches this process iterates per epoch."""
        return math.ceil(self.n_bags() / self.bags_per_batch) // self.num_replicas

    def temperature(self, epoch: int) -> float | None:
        """The bag temperature at ``epoch`` (``None`` for samplers without one)."""
        return None


class _EpochSetter:
    """Forwards ``set_epoch`` to a :class:`BagSampler`."""

    def __init__(self, owner: BagSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class _TemporalBase(BagSampler):
    """Shared by the temporal samplers: per-video ranking of fragments by time distance."""

    def __init__(
        self,
        index: FragmentIndex,
        n_views: int = 5,
        batch_size: int = 60,
        seed: int = 0,
        small_videos: SmallVideoPolicy = "raise",
    ) -> None:
        super().__init__(index, n_views=n_views, batch_size=batch_size, seed=seed)
        self.groups: dict[str, np.ndarray] = {}
        for video, members in index.video_groups().items():
            if len(members) < n_views:
                if small_videos == "raise":
                    raise ConfigError(
                        f"video {video!r} has {len(members)} fragment(s) but a bag needs n_views={n_views}: "
                        f"lower n_views, lower fragment_length or stride (more fragments per video), "
                        f"or remove that video"
                    )
                continue
            self.groups[video] = members
        if not self.groups:
            raise ConfigError(
                f"no video has at least n_views={n_views} fragments; lower n_views or fragment_length"
            )

    def n_bags(self) -> int:
        return sum(len(m) for m in self.groups.values())

    def ranked_neighbours(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each anchor of one video, the other fragments sorted by temporal distance.

        Args:
            members: (M,) fragment indices of one video.
            rng: breaks ties between equally distant fragments at random.

        Returns:
            (M, M-1) fragment indices; row ``a``, column ``r-1`` is the rank-``r``
            neighbour of anchor ``members[a]``.
        """
        pos = np.asarray(self.index.position, dtype=np.float64)[members]
        dist = np.abs(pos[:, None] - pos[None, :])
        np.fill_diagonal(dist, -1.0)  # the anchor itself is rank 0
        tie = rng.random(dist.shape)
        order = np.lexsort((tie, dist), axis=-1)
        return members[order[:, 1:]]


class TemporalTemperatureBagSampler(_TemporalBase):
    """Temporal temperature bags (docs/method.md#temporal-bags).

    For each anchor, the other M−1 fragments of its video are ranked by temporal
    distance; ``n_views - 1`` of them are drawn without replacement with probability
    ∝ exp(−rank / T) (successive sampling, via the Gumbel-top-k trick: the first
    member follows exactly that distribution). ``T`` follows a cosine schedule from
    ``t_min`` at epoch 0 to ``t_max`` at epoch ``max_epochs - 1``.

    Args:
        index: the fragments.
        n_views: bag size including the anchor.
        batch_size: items per batch, a multiple of ``n_views``.
        t_min: temperature at the first epoch (easy bags: nearest fragments).
        t_max: temperature at the last epoch (harder, noisier bags).
        max_epochs: length of the schedule.
        schedule: one of :data:`T_SCHEDULES` (``last_epoch``: ``t_max`` at the last epoch).
        seed: bags depend only on (seed, epoch).
        small_videos: ``"raise"`` (default) on a video with fewer than ``n_views``
            fragments, or ``"skip"`` such videos.
    """

    def __init__(
        self,
        index: FragmentIndex,
        n_views: int = 5,
        batch_size: int = 60,
        t_min: float = 0.3,
        t_max: float = 12.0,
        max_epochs: int = 50,
        seed: int = 0,
        small_videos: SmallVideoPolicy = "raise",
        schedule: str = "last_epoch",
    ) -> None:
        if not 0 < t_min <= t_max:
            raise ConfigError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
        cosine_temperature(0, max(max_epochs, 1), t_min, t_max, schedule)  # validates it
        self.schedule = schedule
        if max_epochs < 1:
            raise ConfigError(f"max_epochs must be >= 1, got {max_epochs}")
        super().__init__(
            index, n_views=n_views, batch_size=batch_size, seed=seed, small_videos=small_videos
        )
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.max_epochs = int(max_epochs)

    def temperature(self, epoch: int) -> float:
        return cosine_temperature(epoch, self.max_epochs, self.t_min, self.t_max, self.schedule)

    def build_bags(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        epoch = self.epoch if epoch is None else epoch
        temp = self.temperature(epoch)
        rng = np.random.default_rng([self.seed, epoch, 0])
        k = self.n_views - 1
        bags = []
        for members in self.groups.values():
            ranked = self.ranked_neighbours(members, rng)  # (M, M-1)
            m1 = ranked.shape[1]
            log_p = -np.arange(1, m1 + 1, dtype=np.float64) / temp
            keys = log_p[None, :] + rng.gumbel(size=ranked.shape)
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            # order the k drawn ranks by key: the successive-sampling draw order
            top_keys = np.take_along_axis(keys, top, axis=1)
            top = np.take_along_axis(top, np.argsort(-top_keys, axis=1), axis=1)
            chosen = np.take_along_axis(ranked, top, axis=1)
            bags.append(np.concatenate([members[:, None], chosen], axis=1))
        return np.concatenate(bags).astype(np.int64), None  # labels local to each batch


class KNearestBagSampler(_TemporalBase):
    """Bags of the anchor and its ``n_views - 1`` nearest fragments in time (no temperature)."""

    def build_bags(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, 0])
        bags = []
        for members in self.groups.values():
            ranked = self.ranked_neighbours(members, rng)
            bags.append(np.concatenate([members[:, None], ranked[:, : self.n_views - 1]], axis=1))
        return np.concatenate(bags).astype(np.int64), None


class IdentityBagSampler(BagSampler):
    """Supervised bags: the anchor plus ``n_views - 1`` fragments with its identity label.

    Members are drawn uniformly without replacement from the identity's other
    fragments (with replacement when it has fewer than ``n_views - 1`` others). An
    identity with a single fragment cannot anchor a bag and is skipped. The bag label
    is the identity's code, so bags of the same polyp in one batch are positives of
    each other.
    """

    def __init__(
        self, index: FragmentIndex, n_views: int = 5, batch_size: int = 60, seed: int = 0
    ) -> None:
        super().__init__(index, n_views=n_views, batch_size=batch_size, seed=seed)
        if index.identity is None:
            raise ConfigError(
                "IdentityBagSampler needs identity labels (FragmentIndex.identity); "
                "use the temporal_temperature or knn sampler for unlabelled data"
            )
        names = np.asarray([str(i) for i in index.identity])
        _, codes = np.unique(names, return_inverse=True)
        self.identity_codes = codes.astype(np.int64)
        self.groups = {int(c): np.flatnonzero(codes == c) for c in np.unique(codes)}
        self.anchors = np.concatenate(
            [m for m in self.groups.values() if len(m) >= 2] or [np.zeros(0, dtype=np.int64)]
        )
        if len(self.anchors) == 0:
            raise ConfigError(
                "no identity has at least 2 fragments; IdentityBagSampler cannot form bags"
            )

    def n_bags(self) -> int:
        return len(self.anchors)

    def build_bags(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, 0])
        k = self.n_views - 1
        bags = np.empty((len(self.anchors), self.n_views), dtype=np.int64)
        for row, anchor in enumerate(self.anchors):
            code = int(self.identity_codes[anchor])
            others = self.groups[code][self.groups[code] != anchor]
            chosen = rng.choice(others, size=k, replace=len(others) < k)
            bags[row, 0] = anchor
            bags[row, 1:] = chosen
        return bags, self.identity_codes[self.anchors]


def bag_noise_rate(
    index: FragmentIndex, sampler: BagSampler, epochs: Sequence[int] | int = 1
) -> float:
    """Fraction of non-anchor bag members whose identity differs from the anchor's.

    Args:
        index: fragments with identity labels (the sampler's index).
        sampler: any bag sampler over ``index``.
        epochs: an epoch count (epochs ``0..n-1``) or the epochs to measure.

    Returns:
        The pooled fraction over all bags of those epochs.
    """
    if index.identity is None:
        raise InvalidInputError("bag_noise_rate needs identity labels in the FragmentIndex")
    identity = np.asarray([str(i) for i in index.identity])
    epoch_list = list(range(epochs)) if isinstance(epochs, int) else list(epochs)
    wrong = total = 0
    for epoch in epoch_list:
        bags, _ = sampler.build_bags(epoch)
        anchors = identity[bags[:, :1]]
        members = identity[bags[:, 1:]]
        wrong += int(np.sum(members != anchors))
        total += members.size
    return wrong / total if total else 0.0


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler settings of a run (the ``TrainConfig`` fields of the same name);
    each sampler reads those it needs."""

    n_views: int = 5
    batch_size: int = 60
    seed: int = 0
    max_epochs: int = 50
    t_min: float = 0.3
    t_max: float = 12.0
    small_videos: SmallVideoPolicy = "raise"
    t_schedule: str = "last_epoch"


SamplerBuilder = Callable[[FragmentIndex, SamplerSettings], BagSampler]

SAMPLERS: dict[str, SamplerBuilder] = {
    "temporal_temperature": lambda index, s: TemporalTemperatureBagSampler(
        index,
        s.n_views,
        s.batch_size,
        s.t_min,
        s.t_max,
        s.max_epochs,
        s.seed,
        s.small_videos,
        s.t_schedule,
    ),
    "knn": lambda index, s: KNearestBagSampler(
        index, s.n_views, s.batch_size, s.seed, small_videos=s.small_videos
    ),
    "identity": lambda index, s: IdentityBagSampler(index, s.n_views, s.batch_size, s.seed),
}
"""Bag samplers by name (``TrainConfig.sampler``); extend it with :func:`register_sampler`."""


def register_sampler(name: str) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Decorator: register ``builder(index, settings) -> BagSampler`` as sampler ``name``."""

    def decorator(builder: SamplerBuilder) -> SamplerBuilder:
        SAMPLERS[name] = builder
        return builder

    return decorator


def sampler_names() -> tuple[str, ...]:
    """The registered bag samplers, in registration order."""
    return tuple(SAMPLERS)


def check_sampler(kind: str) -> None:
    """Raise a ConfigError naming the registered samplers unless ``kind`` is one."""
    if kind not in SAMPLERS:
        raise ConfigError(f"unknown sampler kind {kind!r}; choose one of {sampler_names()}")


def make_sampler(
    kind: str,
    index: FragmentIndex,
    n_views: int,
    batch_size: int,
    max_epochs: int,
    t_min: float,
    t_max: float,
    seed: int,
    small_videos: SmallVideoPolicy = "raise",
    t_schedule: str = "last_epoch",
) -> BagSampler:
    """The bag sampler named ``kind`` (one of :data:`SAMPLERS`) over ``index``.

    Raises:
        ConfigError: an unknown ``kind`` (the known ones are listed), or settings the
            sampler rejects.
    """
    check_sampler(kind)
    settings = SamplerSettings(
        n_views, batch_size, seed, max_epochs, t_min, t_max, small_videos, t_schedule
    )
    return SAMPLERS[kind](index, settings)
