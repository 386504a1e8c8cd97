"""Encoder version strings shared by every layer (docs/runtimes.md#one-identity-per-model)."""

from __future__ import annotations

# Suffixes that releases before the one-identity rule appended to the version of
# embeddings computed at a reduced runtime precision (read as their base version).
LEGACY_RUNTIME_SUFFIXES = ("+bf16", "+fp16")


def canonical_version(version: str) -> str:
    """``version`` without a legacy runtime-precision suffix (``"v+bf16"`` → ``"v"``,
    ``"v+int8+bf16"`` → ``"v+int8"``); other versions unchanged."""
    for suffix in LEGACY_RUNTIME_SUFFIXES:
        if version.endswith(suffix) and len(version) > len(suffix):
            return version[: -len(suffix)]
    return version
