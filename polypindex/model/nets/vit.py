"""A small Vision Transformer frame encoder (docs/method.md#frame-pretraining: the MSN backbone
besides the ResNets).

Patch embedding (a strided convolution), fixed 2-D sine-cosine position embeddings
(computed from the patch grid, so any input size divisible by the patch size works and
nothing depends on a training resolution), a learned CLS token, pre-norm Transformer
blocks and a final LayerNorm; the frame feature is the CLS output.

For masked pretraining, :meth:`VisionTransformer.forward` takes the indices of the
patch tokens to keep (the others are dropped before the Transformer, as in MSN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polypindex.model.core.errors import ConfigError, InvalidInputError


@dataclass(frozen=True)
class ViTConfig:
    """A ViT's size.

    Attributes:
        patch_size: side of the square patches in pixels (the input side must be a multiple).
        dim: token width (= the frame feature size).
        depth: Transformer blocks.
        heads: attention heads; must divide ``dim``.
        mlp_ratio: feed-forward width as a multiple of ``dim``.
    """

    patch_size: int = 8
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if min(self.patch_size, self.dim, self.depth, self.heads) < 1:
            raise ConfigError(f"ViT sizes must be >= 1, got {self}")
        if self.dim % self.heads or self.dim % 4:
            raise ConfigError(
                f"ViT dim ({self.dim}) must be divisible by heads ({self.heads}) and by 4"
            )


# Named sizes (the backbone names of model.nets.encoder.EncoderConfig). ViT-Tiny/8 is the
# usual small ViT; vit_micro is for tests and smoke runs.
VIT_PRESETS = {
    "vit_tiny": ViTConfig(patch_size=8, dim=192, depth=12, heads=3),
    "vit_micro": ViTConfig(patch_size=8, dim=32, depth=2, heads=2, mlp_ratio=2.0),
}


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine embeddings, ``(grid_h * grid_w, dim)``, row-major patch order.

    Half of the channels encode the row, half the column; each half is
    ``[sin(p·ω_k), cos(p·ω_k)]`` with ``ω_k = 10000^(−k / (dim/4))``.
    """
    if dim % 4:
        raise ConfigError(f"position embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows = torch.arange(grid_h, dtype=torch.float32)[:, None].expand(grid_h, grid_w).reshape(-1)
    cols = torch.arange(grid_w, dtype=torch.float32)[None, :].expand(grid_h, grid_w).reshape(-1)
    out_r = rows[:, None] * omega[None, :]
    out_c = cols[:, None] * omega[None, :]
    return torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)


class VisionTransformer(nn.Module):
    """A pre-norm ViT returning the CLS feature.

    Args:
        config: the size.

    Shapes:
        ``forward``: ``[n, 3, H, W]`` (H, W multiples of ``patch_size``) and optional
        ``keep [n, k]`` patch indices → ``[n, dim]``.
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = config or ViTConfig()
        cfg = self.config
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.dim,
            nhead=cfg.heads,
            dim_feedforward=int(cfg.dim * cfg.mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out_features = cfg.dim

    def patch_tokens(self, x: Tensor) -> Tensor:
        """``[n, 3, H, W]`` → patch tokens with position embeddings ``[n, P, dim]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidInputError(f"ViT expects [n, 3, H, W], got {tuple(x.shape)}")
        p = self.config.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise InvalidInputError(
                f"ViT input side {tuple(x.shape[-2:])} must be a multiple of patch_size {p}"
            )
        tokens = self.patch_embed(x)  # [n, dim, gh, gw]
        gh, gw = tokens.shape[-2], tokens.shape[-1]
        pos = sincos_position_embedding(gh, gw, self.config.dim).to(tokens)
        return tokens.flatten(2).transpose(1, 2) + pos

    def n_patches(self, im_size: int) -> int:
        """Patch tokens of a square ``im_size`` input."""
        return (im_size // self.config.patch_size) ** 2

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """CLS features ``[n, dim]``; ``keep [n, k]`` (int64 patch indices) drops the other patches."""
        tokens = self.patch_tokens(x)
        if keep is not None:
            index = keep.to(tokens.device)[:, :, None].expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        out = self.blocks(torch.cat([cls, tokens], dim=1))
        return self.norm(out[:, 0])
