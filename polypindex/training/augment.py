"""Batched image augmentations and masks for frame-level MSN pretraining
(docs/method.md#frame-pretraining).

They act on already-normalised crops (the output of :func:`model.data.preprocess.normalize`,
``[n, 3, H, W]``), in torch, on whichever device the batch is on; every random draw
comes from the ``generator`` given (reproducible views).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import PreprocessConfig


@dataclass(frozen=True)
class AugmentConfig:
    """One view's random augmentation.

    Attributes:
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio (width / height).
        flip_prob: probability of a horizontal flip.
        color_jitter_prob: probability of colour jitter.
        color_jitter_strength: brightness, contrast and saturation factors are drawn
            from ``[1 − s, 1 + s]``.
    """

    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    color_jitter_strength: float = 0.4

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("flip_prob", "color_jitter_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.color_jitter_strength < 1:
            raise ConfigError(
                f"color_jitter_strength must be in [0, 1), got {self.color_jitter_strength}"
            )


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def random_resized_crop(
    x: Tensor, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator
) -> Tensor:
    """Per image, a random crop (area fraction in ``scale``, aspect in ``ratio``) resized
    back to the input size (bilinear). ``[n, 3, H, W] → [n, 3, H, W]``."""
    n, _, h, w = x.shape
    area = _uniform(n, scale[0], scale[1], generator) * h * w
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = log_ratio.exp()
    cw = (area * aspect).sqrt().clamp(1.0, w)
    ch = (area / aspect).sqrt().clamp(1.0, h)
    x0 = torch.rand(n, generator=generator) * (w - cw)
    y0 = torch.rand(n, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    return roi_align(x, boxes.to(x), output_size=(h, w), sampling_ratio=2, aligned=True)


def random_flip(x: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Flip each image left-right with probability ``prob``."""
    flip = (torch.rand(x.shape[0], generator=generator) < prob).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def color_jitter(
    x: Tensor,
    preprocess: PreprocessConfig,
    strength: float,
    prob: float,
    generator: torch.Generator,
) -> Tensor:
    """Random brightness, contrast and saturation in [0, 1] pixel space, per image.

    The normalisation of ``preprocess`` is undone, the factors applied, values clipped
    to [0, 1], and the normalisation redone.
    """
    n = x.shape[0]
    mean = torch.tensor(preprocess.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(preprocess.std, dtype=x.dtype, device=x.device)[None, :, None, None]
    img = x * std + mean
    apply = (torch.rand(n, generator=generator) < prob).to(x.device)[:, None, None, None]

    def factor() -> Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).to(x)[:, None, None, None]

    out = img * factor()
    gray_mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - gray_mean) * factor() + gray_mean
    gray = out.mean(dim=1, keepdim=True)
    out = ((out - gray) * factor() + gray).clamp(0.0, 1.0)
    out = torch.where(apply, out, img)
    return (out - mean) / std


def augment(
    x: Tensor, config: AugmentConfig, preprocess: PreprocessConfig, generator: torch.Generator
) -> Tensor:
    """One random view of every image: crop → flip → colour jitter. ``[n, 3, H, W]``."""
    out = random_resized_crop(x, config.crop_scale, config.crop_ratio, generator)
    out = random_flip(out, config.flip_prob, generator)
    if config.color_jitter_prob > 0 and config.color_jitter_strength > 0:
        out = color_jitter(
            out, preprocess, config.color_jitter_strength, config.color_jitter_prob, generator
        )
    return out


def random_keep_indices(
    n: int, n_patches: int, mask_ratio: float, generator: torch.Generator
) -> Tensor:
    """Per image, the sorted indices of the patches kept after masking ``mask_ratio`` of them.

    Returns:
        int64 ``[n, k]`` with ``k = max(1, round(n_patches · (1 − mask_ratio)))``.
    """
    if not 0 <= mask_ratio < 1:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = max(1, round(n_patches * (1 - mask_ratio)))
    order = torch.rand(n, n_patches, generator=generator).argsort(dim=1)
    return order[:, :keep].sort(dim=1).values


def mask_patches(x: Tensor, keep: Tensor, patch_size: int) -> Tensor:
    """Zero the patches not in ``keep`` (0 is the mean colour after normalisation).

    Args:
        x: ``[n, 3, H, W]``, H and W multiples of ``patch_size``.
        keep: ``[n, k]`` kept patch indices, row-major over the ``(H/p) × (W/p)`` grid.
        patch_size: p.

    Returns:
        ``[n, 3, H, W]`` with the dropped patches set to 0.
    """
    n, _, h, w = x.shape
    if h % patch_size or w % patch_size:
        raise ConfigError(f"image side {(h, w)} must be a multiple of patch_size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    visible = torch.zeros(n, gh * gw, dtype=x.dtype, device=x.device)
    visible.scatter_(1, keep.to(x.device), 1.0)
    grid = visible.reshape(n, 1, gh, gw)
    pixel = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return x * pixel
