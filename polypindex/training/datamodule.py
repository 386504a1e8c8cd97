"""From a dataset folder to training and evaluation batches (docs/method.md#fragments).

Tracklets come from :func:`model.data.coco.load_coco_split`, crops from
:func:`model.data.embedding.cached_sequences` through :class:`model.data.preprocess.CropCache`
(uint8, cached on disk, held in memory once loaded), training fragments (random
sampling for the loss) from :func:`model.data.tracklets.fragment_indices`, whole-tracklet
evaluation items from :func:`model.data.embedding.selected_frames`, tensors from
:func:`model.data.preprocess.normalize` — the one preprocessing, never re-implemented.

Only the frames on the stride grid (``0, stride, 2·stride, ...``) are cropped:
fragments (of any length, and whole-tracklet evaluation items) only use those.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import (
    WHOLE_TRACKLET,
    FragmentConfig,
    PreprocessConfig,
    TrackletConfig,
    whole_tracklet,
)
from polypindex.model.data.embedding import cached_sequences, selected_frames
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.data.tracklets import Tracklet, fragment_indices
from polypindex.training.samplers import (
    SAMPLERS,
    BagSampler,
    FragmentIndex,
    SamplerSettings,
    check_sampler,
)


def stride_grid(n_frames: int, stride: int) -> np.ndarray:
    """Indices of the frames a tracklet's fragments can use: ``0, stride, ...``."""
    return np.arange(0, n_frames, stride, dtype=np.int64)


def load_crops(tracklets: Sequence[Tracklet], cache: CropCache, stride: int) -> list[np.ndarray]:
    """uint8 crops of every tracklet's stride-grid frames, ``(ceil(n/stride), H, W, 3)`` each."""
    return [cached_sequences(t, [stride_grid(len(t), stride)], cache)[0] for t in tracklets]


def grid_rows(grid_crops: np.ndarray, frames: np.ndarray, stride: int) -> np.ndarray:
    """The crops of ``frames`` (indices into the tracklet, on its stride grid) taken from
    the tracklet's stride-grid crops (:func:`load_crops`)."""
    return grid_crops[np.asarray(frames) // stride]


@dataclass(frozen=True)
class Fragments:
    """The fragments of a set of tracklets.

    Attributes:
        tracklet: (F,) index of each fragment's tracklet.
        frames: F arrays of frame indices into the tracklet (``fragment_indices``).
        index: the sampler's view (video, normalised position, tracklet, identity).
    """

    tracklet: np.ndarray
    frames: list[np.ndarray]
    index: FragmentIndex

    def __len__(self) -> int:
        return len(self.frames)


def build_fragments(tracklets: Sequence[Tracklet], fragment: FragmentConfig) -> Fragments:
    """Cut tracklets into fragments and describe them for the samplers.

    A fragment's position is its centre frame (midpoint of its first and last frame)
    normalised over its video's annotated frame range (first to last frame of any
    tracklet of that video).
    """
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for t in tracklets:
        first[t.sequence_id] = min(first.get(t.sequence_id, t.start_frame), t.start_frame)
        last[t.sequence_id] = max(last.get(t.sequence_id, t.end_frame), t.end_frame)
    owner, frames, video, position, identity = [], [], [], [], []
    for ti, t in enumerate(tracklets):
        lo, hi = first[t.sequence_id], last[t.sequence_id]
        span = max(hi - lo, 1)
        for idx in fragment_indices(len(t), fragment):
            owner.append(ti)
            frames.append(idx)
            video.append(t.sequence_id)
            centre = 0.5 * (float(t.frame_ids[idx[0]]) + float(t.frame_ids[idx[-1]]))
            position.append(float(np.clip((centre - lo) / span, 0.0, 1.0)))
            identity.append(str(t.identity_id))
    has_identity = all(t.identity_id is not None for t in tracklets)
    index = FragmentIndex(
        video=np.asarray(video, dtype=object),
        position=np.asarray(position, dtype=np.float64),
        tracklet=np.asarray(owner, dtype=np.int64),
        identity=np.asarray(identity, dtype=object) if has_identity else None,
    )
    return Fragments(tracklet=np.asarray(owner, dtype=np.int64), frames=frames, index=index)


@dataclass(eq=False)
class FragmentDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Training items: one fragment as float32 ``[s, 3, H, W]``.

    Indexed by the batch sampler's ``(fragment index, bag label)`` pairs; an item is
    ``(frames [s, 3, H, W], bag label, fragment index)``.
    """

    fragments: Fragments
    crops: Sequence[np.ndarray]  # per tracklet, the crops of its stride grid
    stride: int
    preprocess: PreprocessConfig

    def __len__(self) -> int:
        return len(self.fragments)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        frag, label = item
        grid = self.crops[int(self.fragments.tracklet[frag])]
        crops = grid_rows(grid, self.fragments.frames[frag], self.stride)
        return torch.from_numpy(normalize(crops, self.preprocess)), int(label), int(frag)


@dataclass(eq=False)
class TrackletDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Evaluation items: a whole tracklet (``fragment_length = -1``) as ``[s, 3, H, W]``.

    An item is ``(frames, tracklet index, identity code)``; pair with
    :class:`LengthGroupSampler` so a batch holds tracklets of one length.
    """

    crops: Sequence[np.ndarray]  # per tracklet, the crops of its stride grid
    frames: Sequence[np.ndarray]  # per tracklet, the frames taken (selected_frames)
    identity_codes: np.ndarray
    stride: int
    preprocess: PreprocessConfig

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        crops = grid_rows(self.crops[item], self.frames[item], self.stride)
        return (
            torch.from_numpy(normalize(crops, self.preprocess)),
            int(item),
            int(self.identity_codes[item]),
        )


class LengthGroupSampler:
    """Batches of item indices with equal sequence length, at most ``batch_size`` each."""

    def __init__(self, lengths: Sequence[int], batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"eval batch_size must be >= 1, got {batch_size}")
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(int(n), []).append(i)
        self.batches = [
            members[s : s + batch_size]
            for _, members in sorted(groups.items())
            for s in range(0, len(members), batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@torch.no_grad()
def embed_crops(
    encoder: torch.nn.Module,
    crops: Sequence[np.ndarray],
    preprocess: PreprocessConfig,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    l2_normalize: bool = True,
) -> np.ndarray:
    """Embed sequences of uint8 crops, one length-group at a time.

    Args:
        encoder: has ``embed(x [b, s, 3, H, W]) -> [b, D]`` (HMVE).
        crops: N uint8 arrays ``(s_i, H, W, 3)``.
        preprocess: the normalisation settings.
        batch_size: sequences per forward pass.
        device: where to run (default: the encoder's device).
        l2_normalize: return unit-norm rows.

    Returns:
        float32 ``(N, D)`` in input order.
    """
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out: list[np.ndarray | None] = [None] * len(crops)
    try:
        for batch in LengthGroupSampler([len(c) for c in crops], batch_size):
            x = torch.from_numpy(np.stack([normalize(crops[i], preprocess) for i in batch])).to(
                device
            )
            emb = encoder.embed(x).float()  # type: ignore[operator]
            if l2_normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            for i, row in zip(batch, emb.cpu().numpy(), strict=True):
                out[i] = row
    finally:
        encoder.train(was_training)
    if not crops:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([r for r in out if r is not None]).astype(np.float32)


def embed_tracklets_torch(
    encoder: torch.nn.Module,
    tracklets: Sequence[Tracklet],
    cache: CropCache,
    preprocess: PreprocessConfig,
    fragment: FragmentConfig,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    l2_normalize: bool = True,
) -> np.ndarray:
    """Embed whole tracklets with a torch encoder (the evaluation path,
    docs/method.md#evaluation-protocols).

    Each tracklet is subsampled with ``fragment.stride`` and taken whole (thinned to
    ``fragment.max_frames``), as with ``fragment_length = -1``; ``fragment_length`` is
    ignored.

    Returns:
        float32 ``(len(tracklets), D)``, L2-normalised unless ``l2_normalize=False``.
    """
    whole = whole_tracklet(fragment)
    if cache.config != preprocess:
        raise ConfigError(
            "the CropCache was built with different preprocess settings than `preprocess`"
        )
    seqs = [cached_sequences(t, [selected_frames(len(t), whole)], cache)[0] for t in tracklets]
    return embed_crops(encoder, seqs, preprocess, batch_size, device, l2_normalize)


class FragmentDataModule(L.LightningDataModule):
    """Training fragments in bags, plus validation tracklets (for mAP) and bags (val loss).

    ``train_dataloader`` uses the bag sampler as ``batch_sampler``; batches are
    ``(frames [B, s, 3, H, W], bag labels [B], fragment indices [B])``.
    ``val_dataloader`` returns two loaders: whole validation tracklets grouped by
    length, ``(frames [b, s, 3, H, W], tracklet indices [b], identity codes [b])``; and validation bags
    built once (epoch 0 of the sampler, a fixed seed) so the val loss is comparable
    across epochs. Validation videos with fewer than ``n_views`` fragments are
    skipped for the val loss.

    Args:
        data_root: dataset folder (``images/`` + ``annotations/``).
        cache_dir: folder of the crop cache.
        preprocess, tracklet, fragment: the data-path settings.
        sampler: a registered sampler (:data:`training.samplers.SAMPLERS`).
        bags: its settings (``n_views``, ``batch_size``, ``seed``, the temperature
            schedule); the validation bags use ``seed + 1`` and skip small videos.
        eval_batch_size: tracklets per evaluation forward pass.
        num_workers: DataLoader worker processes.
        train_split, val_split: split names.
        max_val_loss_batches: cap on the validation bag batches (``None`` = all).
    """

    def __init__(
        self,
        data_root: str | Path,
        cache_dir: str | Path,
        preprocess: PreprocessConfig,
        tracklet: TrackletConfig,
        fragment: FragmentConfig,
        sampler: str = "temporal_temperature",
        bags: SamplerSettings = SamplerSettings(),
        eval_batch_size: int = 32,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        max_val_loss_batches: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if fragment.fragment_length == WHOLE_TRACKLET:
            raise ConfigError(
                "training needs fixed-length fragments: set fragment.fragment_length > 0 (e.g. 8)"
            )
        self.data_root = Path(data_root)
        self.cache_dir = Path(cache_dir)
        self.preprocess = preprocess
        self.tracklet_config = tracklet
        self.fragment = fragment
        self.sampler_kind = sampler
        self.bags = bags
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_split = train_split
        self.val_split = val_split
        self.max_val_loss_batches = max_val_loss_batches
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cache = CropCache(self.cache_dir, self.preprocess)
        stride = self.fragment.stride
        self.train_tracklets = load_coco_split(self.data_root, self.train_split).tracklets(
            self.tracklet_config
        )
        self.val_tracklets = load_coco_split(self.data_root, self.val_split).tracklets(
            self.tracklet_config
        )
        for split, tracklets in (
            (self.train_split, self.train_tracklets),
            (self.val_split, self.val_tracklets),
        ):
            if not tracklets:
                raise ConfigError(
                    f"split {split!r} of {self.data_root} has no tracklet of at least "
                    f"{self.tracklet_config.min_tracklet_length} frames; lower tracklet.min_tracklet_length"
                )
        self.train_crops = load_crops(self.train_tracklets, cache, stride)
        self.val_crops = load_crops(self.val_tracklets, cache, stride)
        self.train_fragments = build_fragments(self.train_tracklets, self.fragment)
        if len(self.train_fragments) == 0:
            raise ConfigError(
                f"no training fragment: every tracklet is shorter than stride × fragment_length "
                f"= {self.fragment.stride * self.fragment.fragment_length} frames; lower them"
            )
        build = SAMPLERS[self.sampler_kind]
        self.train_sampler = build(self.train_fragments.index, self.bags)
        self.val_fragments = build_fragments(self.val_tracklets, self.fragment)
        val_bags = replace(self.bags, seed=self.bags.seed + 1, small_videos="skip")
        self.val_sampler: BagSampler | None
        try:
            self.val_sampler = build(self.val_fragments.index, val_bags)
        except ConfigError:
            self.val_sampler = None  # too few validation fragments for bags: no val loss
        whole = whole_tracklet(self.fragment)
        self.val_eval_frames = [selected_frames(len(t), whole) for t in self.val_tracklets]
        identities = [str(t.identity_id) for t in self.val_tracklets]
        _, codes = np.unique(np.asarray(identities), return_inverse=True)
        self.val_identity_codes = codes.astype(np.int64)
        self._ready = True

    @property
    def val_eval_crops(self) -> list[np.ndarray]:
        """uint8 crops of each validation tracklet taken whole (:attr:`val_eval_frames`),
        what the evaluation embeds."""
        stride = self.fragment.stride
        return [
            grid_rows(c, f, stride)
            for c, f in zip(self.val_crops, self.val_eval_frames, strict=True)
        ]

    @property
    def val_identities(self) -> list[str]:
        return [str(t.identity_id) for t in self.val_tracklets]

    def temperature(self, epoch: int) -> float | None:
        return self.train_sampler.temperature(epoch)

    def _loader(self, dataset: Dataset[Any], batch_sampler: Any) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            self.train_sampler.set_distributed(trainer.world_size, trainer.global_rank)
        dataset = FragmentDataset(
            self.train_fragments, self.train_crops, self.fragment.stride, self.preprocess
        )
        return self._loader(dataset, self.train_sampler)

    def val_tracklet_dataloader(self) -> DataLoader[Any]:
        dataset = TrackletDataset(
            self.val_crops,
            self.val_eval_frames,
            self.val_identity_codes,
            self.fragment.stride,
            self.preprocess,
        )
        return self._loader(
            dataset,
            LengthGroupSampler([len(f) for f in self.val_eval_frames], self.eval_batch_size),
        )

    def val_bag_dataloader(self) -> DataLoader[Any] | None:
        if self.val_sampler is None:
            return None
        dataset = FragmentDataset(
            self.val_fragments, self.val_crops, self.fragment.stride, self.preprocess
        )
        batches = self.val_sampler.batches()[: self.max_val_loss_batches]
        return self._loader(dataset, _FixedBatches(batches))

    def val_dataloader(self) -> list[DataLoader[Any]]:
        loaders = [self.val_tracklet_dataloader()]
        bags = self.val_bag_dataloader()
        if bags is not None:
            loaders.append(bags)
        return loaders


class _FixedBatches:
    """A batch sampler replaying precomputed batches (no ``set_epoch``: fixed across epochs)."""

    def __init__(self, batches: list[list[tuple[int, int]]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
