"""The generator's settings, label vocabularies and the records it plans with.

Everything downstream (planning, rendering, writing) reads these; nothing here draws
random numbers except :func:`seeded_rng`, the one way a stage gets its generator.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

HISTOLOGIES = (
    "adenoma",
    "hyperplastic",
    "sessile_serrated",
    "traditional_serrated",
    "inflammatory",
)
HISTOLOGY_P = (0.55, 0.25, 0.12, 0.03, 0.05)
MORPHOLOGIES = ("sessile", "pedunculated", "flat")
MORPHOLOGY_P = (0.6, 0.15, 0.25)
LOCATIONS = ("rectum", "sigmoid", "descending", "transverse", "ascending", "cecum")
PATTERNS = ("tubular", "dots", "smooth")
# Pit-pattern probabilities: adenomas lean tubular, the others lean to fine dots.
PATTERN_P_ADENOMA = (0.6, 0.25, 0.15)
PATTERN_P_OTHER = (0.25, 0.5, 0.25)
# A small palette of polyp base colours (RGB): many polyps share one.
PALETTE = np.array(
    [(214, 120, 112), (196, 96, 98), (226, 150, 134), (205, 132, 140)], dtype=np.float32
)
# Named palettes (``SynthConfig.palette``): "shifted" is another small set of tones —
# more orange, more violet, one paler, one darker — none of them in the default palette.
PALETTES: dict[str, np.ndarray] = {
    "default": PALETTE,
    "shifted": np.array(
        [(232, 138, 96), (182, 92, 122), (238, 176, 160), (172, 84, 76), (210, 112, 136)],
        dtype=np.float32,
    ),
}
SPRITE = 128  # canonical sprite side, pixels
SPRITE_RADIUS = 0.28 * SPRITE  # base radius; harmonics keep the outline inside the sprite
MIN_GAP = 5  # frames without the polyp between two of its tracklets
PX_PER_MM = (3.0, 5.5)  # pixel diameter per millimetre at 320x256 (camera distance)
DIMINUTIVE_FRACTION = 0.4  # polyps of size <= 5 mm
MIN_VISIBLE_PX = 2  # a clipped box narrower than this ends the polyp's run
MIN_CONSECUTIVE_IOU = 0.5  # what the motion model guarantees inside a run
POLYP_COLOR_SD = 2.0  # per-polyp shift of its palette colour (RGB levels): colours are shared
RUN_CAST_SD = 0.10  # per-tracklet colour cast (per-channel gain sd): light, angle, white balance


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings; validated on construction.

    Attributes:
        n_procedures: Number of procedures (videos); sequence ids ``001-001``...
        frames_per_procedure: Length of each procedure's timeline in frames. Only
            frames showing a polyp are written, ``frame_id`` keeps the timeline.
        image_width: Frame width in pixels.
        image_height: Frame height in pixels.
        polyps_per_procedure: Inclusive (low, high) number of polyps per procedure.
        tracklets_per_polyp: Inclusive (low, high) number of tracklets (runs) per polyp.
            Runs that do not fit the timeline are dropped (never a polyp's last).
        tracklet_length: Inclusive (low, high) run length in frames.
        lookalike_fraction: Fraction of polyps whose look is copied, slightly
            perturbed, from a polyp of another procedure (hard negatives).
        interleave: In [0, 1]: how often neighbouring visits swap and how often a
            run of another polyp starts before the previous run ends (two in view).
        split_fractions: Train, val, test fractions of the procedures (at least
            one procedure each when ``n_procedures >= 3``).
        jpeg_quality: JPEG quality of the written frames (1–100).
        seed: Non-negative random seed; same seed, same bytes.
        workers: Worker processes rendering procedures in parallel.
        palette: Name of the polyp base-colour palette in ``PALETTES``.
        camera_speed: Scale of the camera's pan speed over the mucosa (1 = default;
            2 = twice as fast).
    """

    n_procedures: int = 20
    frames_per_procedure: int = 1200
    image_width: int = 320
    image_height: int = 256
    polyps_per_procedure: tuple[int, int] = (1, 5)
    tracklets_per_polyp: tuple[int, int] = (1, 6)
    tracklet_length: tuple[int, int] = (30, 150)
    lookalike_fraction: float = 0.5
    interleave: float = 0.25
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    jpeg_quality: int = 90
    seed: int = 0
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    # added after the dataset format was fixed: left out of synth_report.json at their
    # defaults, so a default dataset stays byte-identical (SynthConfig.report_dict)
    palette: str = "default"
    camera_speed: float = 1.0

    def report_dict(self) -> dict[str, Any]:
        """The settings as written to ``synth_report.json``: every field, except the
        later variation fields (``palette``, ``camera_speed``) when at their defaults."""
        data = asdict(self)
        for name in LATER_FIELDS:
            if data[name] == _DEFAULTS[name]:
                del data[name]
        return data

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"SynthConfig: {msg}")

        if not 1 <= self.n_procedures <= 999:
            raise bad(f"n_procedures must be in [1, 999], got {self.n_procedures}")
        if self.image_width < 64 or self.image_height < 64:
            raise bad(
                f"image size must be at least 64x64, got {self.image_width}x{self.image_height}; "
                "raise image_width/image_height"
            )
        for name in ("polyps_per_procedure", "tracklets_per_polyp", "tracklet_length"):
            pair = getattr(self, name)
            if len(pair) != 2 or not 1 <= pair[0] <= pair[1]:
                raise bad(
                    f"{name} must be a (low, high) pair with 1 <= low <= high, got {tuple(pair)}"
                )
        if self.polyps_per_procedure[1] > 99:
            raise bad(
                f"polyps_per_procedure high must be <= 99 (annotation ids), "
                f"got {self.polyps_per_procedure[1]}"
            )
        if not self.tracklet_length[0] <= self.frames_per_procedure <= 999_999:
            raise bad(
                f"frames_per_procedure ({self.frames_per_procedure}) must be at least the shortest "
                f"tracklet ({self.tracklet_length[0]}) and at most 999999; raise it or lower "
                "tracklet_length"
            )
        if not 0.0 <= self.interleave <= 1.0:
            raise bad(f"interleave must be in [0, 1], got {self.interleave}")
        if not 0.0 <= self.lookalike_fraction <= 1.0:
            raise bad(f"lookalike_fraction must be in [0, 1], got {self.lookalike_fraction}")
        if (
            len(self.split_fractions) != 3
            or any(f < 0 for f in self.split_fractions)
            or sum(self.split_fractions) <= 0
        ):
            raise bad(
                "split_fractions must be three non-negative numbers (train, val, test) with a "
                f"positive sum, got {tuple(self.split_fractions)}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise bad(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.seed < 0:
            raise bad(f"seed must be >= 0, got {self.seed}")
        if self.workers < 1:
            raise bad(f"workers must be >= 1, got {self.workers}")
        if self.palette not in PALETTES:
            raise bad(f"palette must be one of {sorted(PALETTES)}, got {self.palette!r}")
        if not 0.0 < self.camera_speed <= 10.0:
            raise bad(f"camera_speed must be in (0, 10], got {self.camera_speed}")


LATER_FIELDS = ("palette", "camera_speed")
_DEFAULTS: dict[str, Any] = {"palette": "default", "camera_speed": 1.0}

# Named generator settings (``polypindex synth --preset NAME``). "shifted" is the
# generalisation check of docs/results.md: another seed, another palette, more polyps
# per procedure (so more look-alikes and crowded bags), twice as much interleaving, a
# camera panning twice as fast, and every procedure but one in the test split.
SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "shifted": {
        "seed": 101,
        "n_procedures": 8,
        "palette": "shifted",
        "polyps_per_procedure": (2, 6),
        "interleave": 0.5,
        "camera_speed": 2.0,
        "split_fractions": (0.0, 0.0, 1.0),
    },
}


def synth_preset(name: str, **overrides: Any) -> SynthConfig:
    """The :class:`SynthConfig` of preset ``name`` (``SYNTH_PRESETS``), with ``overrides``."""
    if name not in SYNTH_PRESETS:
        raise ValueError(f"SynthConfig: unknown preset {name!r}; known: {sorted(SYNTH_PRESETS)}")
    return SynthConfig(**{**SYNTH_PRESETS[name], **overrides})


@dataclass(frozen=True)
class PolypLook:
    """What a polyp looks like, independent of how it is seen.

    Attributes:
        color: Base RGB colour (from the small palette, weakly shifted by histology).
        harmonics: ``(amplitude, phase)`` of the outline's harmonics k = 2, 3, 4, 5.
        pattern: Surface pit pattern, one of ``PATTERNS``.
        pattern_freq: Groove or dot density.
        pattern_angle: Main groove orientation, radians.
        pattern_seed: Seed of the pattern's fine details (dots, groove warp, marks).
        pattern_contrast: How dark the grooves/pits are, in [0, 1].
    """

    color: tuple[float, float, float]
    harmonics: tuple[tuple[float, float], ...]
    pattern: str
    pattern_freq: float
    pattern_angle: float
    pattern_seed: int
    pattern_contrast: float


@dataclass(frozen=True)
class PolypSpec:
    """One polyp identity: its look, its labels and its runs on the timeline.

    Attributes:
        identity_id: Globally unique id, e.g. ``003-001_p2``.
        look: Appearance.
        size_mm: Size in millimetres.
        histology: One of ``HISTOLOGIES``.
        morphology: One of ``MORPHOLOGIES``.
        location: One of ``LOCATIONS``.
        runs: ``(start frame, length)`` of each tracklet, in time order.
        lookalike_of: Identity whose look this polyp copies (a hard negative), or None.
    """

    identity_id: str
    look: PolypLook
    size_mm: float
    histology: str
    morphology: str
    location: str
    runs: tuple[tuple[int, int], ...]
    lookalike_of: str | None = None


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one stage: seeded by ``(seed, *keys)``, so stages (and worker
    processes) never share a stream and their order does not matter."""
    return np.random.default_rng([seed, *keys])
