"""The tiny encoder configuration the model tests build (imports torch)."""

from __future__ import annotations

from polypindex.model.nets.hmve import EncoderConfig

# A few thousand weights: fast on a CPU, yet the real HMVE code path.
TINY = EncoderConfig(
    backbone="tiny", tiny_width=8, d_model=32, n_layers=2, n_heads=4, dim_feedforward=64
)
