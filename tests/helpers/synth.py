"""Small configurations of the synthetic colonoscopy generator for tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polypindex.synth import SynthConfig


def small_synth(
    *,
    procedures: int,
    frames: int,
    size: tuple[int, int],
    tracklet_length: tuple[int, int],
    seed: int = 0,
    **more: Any,
) -> SynthConfig:
    """A single-process :class:`SynthConfig`: ``procedures`` procedures of ``frames``
    frames of ``size = (width, height)`` pixels; ``more`` sets any other field."""
    from polypindex.synth import SynthConfig  # a test may skip when synth is unavailable

    return SynthConfig(
        n_procedures=procedures,
        frames_per_procedure=frames,
        image_width=size[0],
        image_height=size[1],
        tracklet_length=tracklet_length,
        seed=seed,
        workers=1,
        **more,
    )


def small_dataset(root: Path, **config: Any) -> Path:
    """``root / "data"``, generated quietly from ``small_synth(**config)``."""
    from polypindex.synth import generate

    data = root / "data"
    generate(data, small_synth(**config), progress=False)
    return data
