"""Fragments, crops and batches from a dataset folder (docs/method.md#fragments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.data.tracklets import Tracklet
from polypindex.training.datamodule import (
    FragmentDataModule,
    LengthGroupSampler,
    build_fragments,
    embed_crops,
    embed_tracklets_torch,
)
from polypindex.training.samplers import SamplerSettings

PREPROCESS = PreprocessConfig(im_size=32)
TRACKLET = TrackletConfig(min_tracklet_length=8)
FRAGMENT = FragmentConfig(stride=2, fragment_length=4, max_frames=16)


@pytest.fixture(scope="module")
def tiny_dataset(disc_data: Path) -> Path:
    """The training tests' disc dataset: per video three polyps (coloured discs) in turn,
    16 visible frames, then 4 without (read-only)."""
    return disc_data


@pytest.fixture(scope="module")
def datamodule(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> FragmentDataModule:
    dm = FragmentDataModule(
        tiny_dataset,
        tmp_path_factory.mktemp("crops"),
        PREPROCESS,
        TRACKLET,
        FRAGMENT,
        bags=SamplerSettings(n_views=3, batch_size=6, max_epochs=2),
        eval_batch_size=4,
    )
    dm.setup("fit")
    return dm


def _tracklet(seq: str, start: int, n: int) -> Tracklet:
    return Tracklet(
        sequence_id=seq,
        identity_id="p",
        index=0,
        frame_ids=np.arange(start, start + n),
        boxes=np.tile(np.array([[1, 1, 4, 4]], np.float32), (n, 1)),
    )


def test_fragment_positions_are_centres_normalised_over_the_video() -> None:
    # video "a" spans frames 0..99; stride 2, length 4 → fragments of 7 frames span
    tracklets = [_tracklet("a", 0, 16), _tracklet("a", 84, 16), _tracklet("b", 10, 8)]
    fragments = build_fragments(tracklets, FRAGMENT)
    assert fragments.tracklet.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_array_equal(fragments.frames[1], [8, 10, 12, 14])
    # fragment 0: frames 0..6 → centre 3 / 99; fragment 3: frames 92..98 → 95 / 99
    np.testing.assert_allclose(
        fragments.index.position[[0, 1, 2, 3]], [3 / 99, 11 / 99, 87 / 99, 95 / 99]
    )
    assert fragments.index.position[4] == pytest.approx(3 / 7)  # video b spans 10..17
    assert list(fragments.index.video) == ["a", "a", "a", "a", "b"]


def test_train_batches_are_normalised_fragments(
    datamodule: FragmentDataModule, tiny_dataset: Path
) -> None:
    loader = datamodule.train_dataloader()
    frames, labels, fragment_ids = next(iter(loader))
    assert frames.shape == (6, 4, 3, 32, 32) and frames.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # parity with the one preprocessing: crop via CropCache, then normalize
    frag = int(fragment_ids[0])
    tracklet = datamodule.train_tracklets[int(datamodule.train_fragments.tracklet[frag])]
    idx = datamodule.train_fragments.frames[frag]
    cache = CropCache(datamodule.cache_dir, PREPROCESS)
    expected = normalize(
        cache.get([tracklet.image_paths[i] for i in idx], tracklet.boxes[idx]), PREPROCESS
    )
    np.testing.assert_array_equal(frames[0].numpy(), expected)
    assert len(loader) == len(datamodule.train_sampler)


def test_tracklets_and_fragment_counts(datamodule: FragmentDataModule) -> None:
    # 120 frames = 6 visible runs of 16 per video → 6 tracklets; each gives 2 fragments
    assert len(datamodule.train_tracklets) == 12
    assert len(datamodule.train_fragments) == 24
    assert len(datamodule.val_tracklets) == 6
    assert datamodule.val_identities.count("val-00-p0") == 2


def test_val_loaders(datamodule: FragmentDataModule) -> None:
    tracklet_loader, bag_loader = datamodule.val_dataloader()
    seen = []
    for frames, tracklet_idx, identity in tracklet_loader:
        assert frames.shape[1:] == (8, 3, 32, 32)  # 16 frames at stride 2, taken whole
        assert frames.shape[0] <= 4
        seen += tracklet_idx.tolist()
        codes = datamodule.val_identity_codes[tracklet_idx.numpy()]
        assert identity.tolist() == codes.tolist()
    assert sorted(seen) == list(range(6))
    first = [b[1].tolist() for b in bag_loader]
    assert first == [b[1].tolist() for b in bag_loader]  # fixed across epochs


@pytest.mark.parametrize(
    ("lengths", "batch_size", "expected"),
    [
        ([3, 5, 3, 3, 5], 2, [[0, 2], [3], [1, 4]]),
        ([4, 4, 4], 8, [[0, 1, 2]]),
        ([], 4, []),
    ],
)
def test_length_group_sampler(
    lengths: list[int], batch_size: int, expected: list[list[int]]
) -> None:
    assert list(LengthGroupSampler(lengths, batch_size)) == expected


class _MeanEncoder(nn.Module):
    """Embeds a sequence as the per-channel mean of its frames (a 3-d stand-in for HMVE)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(1, 3, 4))


def test_embed_tracklets_torch_keeps_order_and_matches_direct(
    datamodule: FragmentDataModule,
) -> None:
    tracklets = datamodule.val_tracklets
    cache = CropCache(datamodule.cache_dir, PREPROCESS)
    got = embed_tracklets_torch(
        _MeanEncoder(), tracklets, cache, PREPROCESS, FRAGMENT, batch_size=4
    )
    assert got.shape == (6, 3) and got.dtype == np.float32
    for row, t in zip(got, tracklets, strict=True):
        idx = np.arange(0, len(t), FRAGMENT.stride)
        x = normalize(cache.get([t.image_paths[i] for i in idx], t.boxes[idx]), PREPROCESS)
        v = x.mean(axis=(0, 2, 3))
        np.testing.assert_allclose(row, v / np.linalg.norm(v), rtol=1e-5, atol=1e-6)
    raw = embed_crops(
        _MeanEncoder(), [np.zeros((2, 8, 8, 3), np.uint8)], PREPROCESS, l2_normalize=False
    )
    np.testing.assert_allclose(raw, [[-2.0, -2.0, -2.0]], rtol=1e-6)  # (0 - 0.45) / 0.225


def test_configuration_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fragment_length > 0"):
        FragmentDataModule(
            tiny_dataset, tmp_path, PREPROCESS, TRACKLET, FragmentConfig(fragment_length=-1)
        )
    with pytest.raises(ConfigError, match="unknown sampler"):
        FragmentDataModule(tiny_dataset, tmp_path, PREPROCESS, TRACKLET, FRAGMENT, sampler="random")
    dm = FragmentDataModule(
        tiny_dataset,
        tmp_path,
        PREPROCESS,
        TrackletConfig(min_tracklet_length=500),
        FRAGMENT,
        bags=SamplerSettings(n_views=3, batch_size=6),
    )
    with pytest.raises(ConfigError, match="min_tracklet_length"):
        dm.setup("fit")


def test_coco_tracklets_match_fixture(tiny_dataset: Path) -> None:
    tracklets = load_coco_split(tiny_dataset, "val").tracklets(TRACKLET)
    assert [len(t) for t in tracklets] == [16] * 6
