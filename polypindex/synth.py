"""Synthetic colonoscopies: the project's own test and demo data (COCO, SPEC §2).

The generator makes retrieval a real problem rather than a trivial one:

* every procedure has its own mucosa (tone, vessel density, folds, glints) and a
  camera window that drifts over it; vessel width and texture scale are
  constant in pixels; vignetting, a dark lumen and exposure drift on top;
* polyp colours come from a small palette (colour alone does not identify a
  polyp): identity lives in the outline (a few random Fourier harmonics) and
  the surface-pattern details (tubular grooves, pit dots or smooth, with
  identity-specific marks);
* histology shows weakly (adenomas lean to a tubular pit pattern and a redder
  tone, the others to paler fine dots, with overlap); size shows weakly (the
  pixel diameter is size in mm times a camera distance factor drawn per
  tracklet from a limited range, against mucosa of constant pixel scale);
* each polyp is seen in 1–6 tracklets, each with its own viewpoint rotation,
  distance, lighting and colour cast, background window, occlusion (a fold or an instrument)
  and blur bursts; between two of them the polyp is out of view for at least
  ``MIN_GAP`` frames; tracklets of different polyps interleave and overlap in
  time, so temporal proximity is only a noisy hint of identity;
* a fraction of polyps copy (slightly perturbed) the look, histology and
  morphology of a polyp of another procedure: hard negatives.

Within a tracklet, consecutive boxes overlap with IoU >= 0.5, so the SPEC §3
trackleting rule (gap 1, IoU 0.1) recovers exactly one tracklet per generated
run. Everything is deterministic per seed: each procedure draws from its own
generator seeded by ``(seed, procedure index)``, so the worker order does not
matter and the same seed gives byte-identical annotations and JPEGs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

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


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _random_look(rng: np.random.Generator, adenoma: bool) -> PolypLook:
    base = PALETTE[rng.integers(len(PALETTE))].copy()
    if adenoma:  # weakly redder
        base += np.array([8.0, -10.0, -8.0], dtype=np.float32)
    else:  # weakly paler
        base += np.array([6.0, 8.0, 8.0], dtype=np.float32)
    base += rng.normal(0, POLYP_COLOR_SD, size=3).astype(np.float32)
    pattern = str(rng.choice(PATTERNS, p=PATTERN_P_ADENOMA if adenoma else PATTERN_P_OTHER))
    freq = {"tubular": (0.6, 1.1), "dots": (0.8, 1.6), "smooth": (0.3, 0.6)}[pattern]
    c = np.clip(base, 0, 255)
    return PolypLook(
        color=(float(c[0]), float(c[1]), float(c[2])),
        harmonics=tuple(
            (float(rng.uniform(0.02, 0.14)), float(rng.uniform(0, 2 * math.pi))) for _ in range(4)
        ),
        pattern=pattern,
        pattern_freq=float(rng.uniform(*freq)),
        pattern_angle=float(rng.uniform(0, math.pi)),
        pattern_seed=int(rng.integers(2**31)),
        pattern_contrast=float(rng.uniform(0.2, 0.4) if adenoma else rng.uniform(0.12, 0.32)),
    )


def _perturb(look: PolypLook, rng: np.random.Generator) -> PolypLook:
    """A look-alike: same palette colour, pattern kind and outline, new fine details."""
    c = [float(np.clip(v + rng.normal(0, 4), 0, 255)) for v in look.color]
    return replace(
        look,
        color=(c[0], c[1], c[2]),
        harmonics=tuple(
            (max(0.0, a + float(rng.normal(0, 0.015))), p + float(rng.normal(0, 0.2)))
            for a, p in look.harmonics
        ),
        pattern_freq=look.pattern_freq * float(rng.uniform(0.92, 1.08)),
        pattern_angle=look.pattern_angle + float(rng.normal(0, 0.15)),
        pattern_seed=int(rng.integers(2**31)),
        pattern_contrast=float(np.clip(look.pattern_contrast + rng.normal(0, 0.02), 0.05, 0.5)),
    )


def _timeline(
    rng: np.random.Generator, runs_per_polyp: list[int], config: SynthConfig
) -> list[list[tuple[int, int]]]:
    """Lay the polyps' runs on the procedure timeline, as an endoscopist's visits.

    A polyp's runs are visited one after the other (the camera loses it and finds
    it again), polyp after polyp; with probability ``interleave`` two neighbouring
    visits swap (the camera goes back to an earlier polyp) and, when they belong to
    different polyps, with probability ``interleave`` the next visit starts before
    the previous one ends (two polyps in view). Visits that do not fit in the
    procedure are dropped, never a polyp's last one while another can go.

    Returns:
        Per polyp, its ``(start frame, length)`` runs in time order (may be empty).
    """
    lo, hi = config.tracklet_length
    visits = [j for j, n in enumerate(runs_per_polyp) for _ in range(n)]
    for i in range(len(visits) - 1):
        if rng.random() < config.interleave:
            visits[i], visits[i + 1] = visits[i + 1], visits[i]
    lengths = [int(rng.integers(lo, hi + 1)) for _ in visits]
    gaps = [0] + [
        -int(rng.integers(max(1, lengths[i - 1] // 5), max(2, lengths[i - 1] // 2)))
        if visits[i] != visits[i - 1] and rng.random() < config.interleave
        else int(rng.integers(MIN_GAP, 4 * MIN_GAP + 1))
        for i in range(1, len(visits))
    ]

    def total() -> int:
        return sum(lengths) + sum(gaps)

    while total() > config.frames_per_procedure and len(visits) > 1:
        counts = {v: visits.count(v) for v in visits}
        drop = next(
            (i for i in range(len(visits) - 1, -1, -1) if counts[visits[i]] > 1), len(visits) - 1
        )
        del visits[drop], lengths[drop], gaps[drop]
        gaps[0] = 0
        if 0 < drop < len(gaps) and gaps[drop] < 0 and visits[drop] == visits[drop - 1]:
            gaps[drop] = MIN_GAP  # a polyp never overlaps itself
    if total() > config.frames_per_procedure:
        lengths = [min(length, config.frames_per_procedure) for length in lengths]
    t = int(rng.integers(0, max(0, config.frames_per_procedure - total()) + 1))
    out: list[list[tuple[int, int]]] = [[] for _ in runs_per_polyp]
    last_end = {j: -(10**9) for j in range(len(runs_per_polyp))}
    for v, length, gap in zip(visits, lengths, gaps, strict=True):
        t = max(t + gap, last_end[v] + MIN_GAP, 0)
        length = min(length, config.frames_per_procedure - t)
        if length < lo:
            break
        out[v].append((t, length))
        last_end[v] = t + length
        t += length
    return out


def plan(config: SynthConfig) -> list[list[PolypSpec]]:
    """Decide every procedure's polyps (looks, labels, runs); cheap and deterministic.

    Returns:
        Per procedure (index p, sequence id ``f"{p + 1:03d}-001"``), its polyps.
    """
    procedures: list[list[PolypSpec]] = []
    for p in range(config.n_procedures):
        rng = _rng(config.seed, p, 0)
        n_polyps = int(
            rng.integers(config.polyps_per_procedure[0], config.polyps_per_procedure[1] + 1)
        )
        n_runs = [
            int(rng.integers(config.tracklets_per_polyp[0], config.tracklets_per_polyp[1] + 1))
            for _ in range(n_polyps)
        ]
        timeline = _timeline(rng, n_runs, config)
        polyps = []
        for j in range(n_polyps):
            histology = str(rng.choice(HISTOLOGIES, p=HISTOLOGY_P))
            diminutive = rng.random() < DIMINUTIVE_FRACTION
            size = float(rng.uniform(2.0, 5.0) if diminutive else rng.uniform(5.5, 16.0))
            morphology = str(rng.choice(MORPHOLOGIES, p=MORPHOLOGY_P))
            look = _random_look(rng, histology == "adenoma")
            location = str(rng.choice(LOCATIONS))
            runs = tuple(timeline[j])
            if not runs:
                continue
            polyps.append(
                PolypSpec(
                    identity_id=f"{p + 1:03d}-001_p{j + 1}",
                    look=look,
                    size_mm=round(size, 1),
                    histology=histology,
                    morphology=morphology,
                    location=location,
                    runs=runs,
                )
            )
        procedures.append(polyps)
    # hard negatives: copy the look (and the histology/morphology it expresses) of a
    # polyp of another procedure; sources are always original looks, never copies
    originals = [list(polyps) for polyps in procedures]
    rng = _rng(config.seed, 10**6)
    donors = [q for q in range(config.n_procedures) if originals[q]]
    for p, polyps in enumerate(procedures):
        others = [q for q in donors if q != p]
        for j, spec in enumerate(polyps):
            if others and rng.random() < config.lookalike_fraction:
                q = others[int(rng.integers(len(others)))]
                source = originals[q][int(rng.integers(len(originals[q])))]
                polyps[j] = replace(
                    spec,
                    look=_perturb(source.look, rng),
                    histology=source.histology,
                    morphology=source.morphology,
                    lookalike_of=source.identity_id,
                )
    return procedures


# ----------------------------------------------------------------------------- rendering


def _noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """Smooth noise in [0, 1] (float32 ``(h, w)``) with features of about ``cell_px`` pixels."""
    gh, gw = max(2, round(h / cell_px) + 1), max(2, round(w / cell_px) + 1)
    small = rng.random((gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _vessel_tree(
    rng: np.random.Generator, img: np.ndarray, start: np.ndarray, heading: float, depth: int
) -> None:
    """Draw a branching vessel (random walk with forks) of constant pixel width."""
    pts = [start]
    for step in range(int(rng.integers(6, 22))):
        heading += float(rng.normal(0, 0.35))
        pts.append(pts[-1] + 7.0 * np.array([math.cos(heading), math.sin(heading)]))
        if depth < 2 and step > 2 and rng.random() < 0.12:
            fork = heading + float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.1))
            _vessel_tree(rng, img, pts[-1], fork, depth + 1)
    cv2.polylines(
        img,
        [np.round(np.asarray(pts)).astype(np.int32)],
        False,
        float(rng.uniform(0.5, 1.0)) * (0.8**depth),
        thickness=2 if depth == 0 else 1,
        lineType=cv2.LINE_AA,
    )


def _mucosa(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A large mucosa canvas (RGB float32 ``(h, w, 3)``) the camera window moves over."""
    tone = np.array(
        [rng.uniform(185, 225), rng.uniform(75, 120), rng.uniform(70, 105)], dtype=np.float32
    )
    low = _noise(rng, h, w, 90.0)[..., None]
    grain = _noise(rng, h, w, 3.0)[..., None]  # fine mucosal grain: constant pixel scale
    canvas = tone * (0.82 + 0.3 * low) * (0.95 + 0.1 * grain)
    # haustral folds: curved bands, dark trough and a lighter crest
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 40.0 * _noise(rng, h, w, 120.0)
    crests = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        angle, wavelength = rng.uniform(0, math.pi), rng.uniform(70, 150)
        u = xx * math.cos(angle) + yy * math.sin(angle) + warp
        band = np.sin(u * (2 * math.pi / wavelength) + rng.uniform(0, 2 * math.pi))
        canvas *= (1.0 - 0.16 * np.clip(-band, 0, 1) ** 3)[..., None]
        canvas *= (1.0 + 0.06 * np.clip(band, 0, 1) ** 6)[..., None]
        crests = np.maximum(crests, np.clip(band, 0, 1) ** 12)
    # vessels: branching dark-red trees; density differs between procedures
    vessels = np.zeros((h, w), np.float32)
    density = rng.uniform(0.3, 1.0)
    for _ in range(int(density * h * w / 5000)):
        _vessel_tree(rng, vessels, rng.uniform((0, 0), (w, h)), rng.uniform(0, 2 * math.pi), 0)
    vessel_mask = cv2.GaussianBlur(vessels, (3, 3), 0)[..., None] * rng.uniform(0.3, 0.5)
    canvas = canvas * (1 - vessel_mask) + np.array([140, 25, 40], np.float32) * vessel_mask
    # specular glints on fold crests (they move with the mucosa)
    glints = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(crests > 0.8)
    if len(xs):
        for i in rng.choice(len(xs), size=min(len(xs), int(h * w / 25000)), replace=False):
            axes = (int(rng.integers(1, 5)), int(rng.integers(1, 3)))
            cv2.ellipse(
                glints, (int(xs[i]), int(ys[i])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1
            )
    glow = np.asarray(cv2.GaussianBlur(glints, (5, 5), 1.0))[..., None]
    canvas = canvas * (1 - glow) + 250.0 * glow
    return np.clip(canvas, 0, 255).astype(np.float32)


def _outline(look: PolypLook, points: int = 180) -> np.ndarray:
    """The polyp's edge (where alpha = 0.5) in sprite pixels, float64 ``(points, 2)``."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    radius = 1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(look.harmonics))
    r = 0.95 * SPRITE_RADIUS * radius
    c = (SPRITE - 1) / 2
    return np.stack([c + r * np.cos(theta), c + r * np.sin(theta)], axis=1)


def _sprite(look: PolypLook, morphology: str) -> np.ndarray:
    """The polyp at canonical size, ready to composite.

    Returns:
        float32 ``(SPRITE, SPRITE, 4)``: premultiplied RGB (colour x alpha) and the
        transmission of what lies behind (``1 - alpha``, darkened by the shadow).
    """
    s = SPRITE
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dx, dy = xx - c, yy - c
    theta = np.arctan2(dy, dx)
    radius = np.hypot(dx, dy) / SPRITE_RADIUS
    outline = 1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(look.harmonics))
    inside = radius / outline
    alpha = np.clip((1.0 - inside) * 10.0, 0, 1).astype(np.float32)
    relief = {"flat": 0.15, "sessile": 0.35, "pedunculated": 0.5}[morphology]
    dome = np.sqrt(np.clip(1.0 - inside**2, 0, 1))
    rng = np.random.default_rng(look.pattern_seed)
    cos_a, sin_a = math.cos(look.pattern_angle), math.sin(look.pattern_angle)
    u = (dx * cos_a + dy * sin_a) / SPRITE_RADIUS
    if look.pattern == "tubular":  # elongated, branching grooves
        warp = 2.5 * _noise(rng, s, s, 22.0) + 0.8 * _noise(rng, s, s, 9.0)
        phase = (u * 3.0 + warp) * look.pattern_freq * math.pi * 2.2
        marks = np.exp(-((np.sin(phase) / 0.35) ** 2))
    elif look.pattern == "dots":  # round pits
        pits = np.zeros((s, s), np.float32)
        n = int(look.pattern_freq * 90)
        for x, y in rng.uniform(c - 1.6 * SPRITE_RADIUS, c + 1.6 * SPRITE_RADIUS, size=(n, 2)):
            cv2.circle(pits, (int(x), int(y)), int(rng.integers(1, 3)), 1.0, -1)
        marks = cv2.GaussianBlur(pits, (5, 5), 1.0) * 1.5
    else:  # smooth: soft mottling only
        marks = _noise(rng, s, s, 30.0 / look.pattern_freq) * 0.6
    marks = np.clip(marks, 0, 1)
    blotch = np.clip(_noise(rng, s, s, 26.0) * 2.0 - 1.2, 0, 1)  # identity-specific erythema
    detail = _noise(rng, s, s, 6.0)
    shade = (
        (1.0 - relief + relief * 1.35 * dome)
        * (1.0 - look.pattern_contrast * marks)
        * (0.93 + 0.14 * detail)
    )
    rgb = np.asarray(look.color, np.float32) * shade[..., None]
    rgb = rgb * (1 - 0.25 * blotch[..., None]) + np.array([200, 60, 60], np.float32) * (
        0.25 * blotch[..., None]
    )
    rim = np.clip(1.0 - np.abs(inside - 0.97) * 12.0, 0, 1)  # darker edge where it meets mucosa
    rgb *= (1.0 - 0.25 * rim)[..., None]
    shift = np.array([[1, 0, 3], [0, 1, 4]], dtype=np.float32)
    shadow = cv2.GaussianBlur(cv2.warpAffine(alpha, shift, (s, s)), (0, 0), 4.0)
    transmission = (1.0 - alpha) * (1.0 - (0.2 + 0.3 * relief) * shadow)
    return np.dstack([np.clip(rgb, 0, 255) * alpha[..., None], transmission]).astype(np.float32)


@dataclass
class _Run:
    """Mutable per-tracklet rendering state (one polyp, one run)."""

    spec: PolypSpec
    index: int
    start: int
    length: int
    rng: np.random.Generator
    center: np.ndarray
    velocity: np.ndarray
    diameter: float  # pixels, at the middle of the run
    zoom: float  # relative scale change over the run
    angle: float
    spin: float
    gain: float
    cast: tuple[float, float, float]  # per-channel colour cast of the polyp in this run
    light: tuple[float, float]  # highlight offset on the polyp, in radii
    occluder: tuple[int, int, str, float, float] | None  # first, last frame, kind, offset x, y
    blur: dict[int, tuple[str, float, float]]  # frame -> (kind, strength, angle)
    prev_box: tuple[float, float, float, float] | None = None
    ended: bool = False


def _new_run(
    rng: np.random.Generator,
    spec: PolypSpec,
    index: int,
    start: int,
    length: int,
    config: SynthConfig,
) -> _Run:
    w, h = config.image_width, config.image_height
    px_scale = max(0.5, min(w / 320, h / 256))
    diameter = max(5.0, spec.size_mm * float(rng.uniform(*PX_PER_MM)) * px_scale)
    margin = 0.15 * diameter
    center = rng.uniform(
        (margin, margin), (max(margin + 1, w - margin), max(margin + 1, h - margin))
    )
    occluder = None
    if rng.random() < 0.35:
        first = start + int(rng.integers(0, max(1, length - 10)))
        occluder = (
            first,
            first + int(rng.integers(8, 30)),
            "instrument" if rng.random() < 0.3 else "fold",
            float(rng.uniform(-0.5, 0.5)),
            float(rng.uniform(-0.5, 0.5)),
        )
    blur: dict[int, tuple[str, float, float]] = {}
    for _ in range(int(rng.integers(0, 3))):
        first = start + int(rng.integers(0, length))
        kind = "motion" if rng.random() < 0.7 else "defocus"
        strength, angle = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, 180))
        for f in range(first, min(start + length, first + int(rng.integers(3, 12)))):
            blur[f] = (kind, strength, angle)
    return _Run(
        spec=spec,
        index=index,
        start=start,
        length=length,
        rng=rng,
        center=center.astype(np.float64),
        velocity=rng.normal(0, 0.02 * diameter, size=2),
        diameter=diameter,
        zoom=float(rng.uniform(-0.25, 0.25)),
        angle=float(rng.uniform(0, 360)),
        spin=float(np.clip(rng.normal(0, 0.6), -1.2, 1.2)),
        gain=float(rng.uniform(0.75, 1.25)),
        cast=_cast(rng),
        light=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.5, 0.0))),
        occluder=occluder,
        blur=blur,
    )


def _cast(rng: np.random.Generator) -> tuple[float, float, float]:
    """A per-channel colour gain around 1 (sd ``RUN_CAST_SD``, clipped at ±2 sd)."""
    g = np.clip(rng.normal(1.0, RUN_CAST_SD, size=3), 1 - 2 * RUN_CAST_SD, 1 + 2 * RUN_CAST_SD)
    return (float(g[0]), float(g[1]), float(g[2]))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _place(
    run: _Run, frame_index: int, pan: np.ndarray, w: int, h: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Advance the run's motion one frame; return the sprite's affine map and ROI."""
    k = frame_index - run.start
    progress = k / max(1, run.length - 1)
    diameter = run.diameter * (1 + run.zoom * (progress - 0.5)) * (1 + 0.08 * math.sin(k / 20.0))
    run.velocity = 0.92 * run.velocity + run.rng.normal(0, 0.006 * diameter + 0.02, size=2)
    limit = 0.03 * diameter + 0.1
    speed = float(np.hypot(*run.velocity))
    if speed > limit:
        run.velocity *= limit / speed
    # the polyp moves with the mucosa (against the pan) and on its own, but the
    # endoscopist keeps it steady: the step stays small relative to its size
    step = run.velocity - pan
    step_limit = 0.05 * diameter + 0.1
    step_norm = float(np.hypot(*step))
    if step_norm > step_limit:
        step *= step_limit / step_norm
    margin = 0.15 * diameter  # at most ~35% of the polyp leaves the frame
    run.center = np.clip(run.center + step, (margin, margin), (w - margin, h - margin))
    run.angle += run.spin
    scale = diameter / (2 * SPRITE_RADIUS)
    m = np.asarray(
        cv2.getRotationMatrix2D(((SPRITE - 1) / 2, (SPRITE - 1) / 2), run.angle, scale), np.float64
    )
    m[:, 2] += run.center - (SPRITE - 1) / 2
    half = SPRITE * scale * 0.72  # sprite corners after any rotation
    x0, y0 = max(0, int(run.center[0] - half)), max(0, int(run.center[1] - half))
    x1, y1 = min(w, int(run.center[0] + half) + 2), min(h, int(run.center[1] + half) + 2)
    return m, (x0, y0, x1, y1)


def _occlude(frame: np.ndarray, run: _Run, box: tuple[float, float, float, float]) -> None:
    assert run.occluder is not None
    _, _, kind, ox, oy = run.occluder
    bx, by, bw, bh = box
    cx, cy = int(bx + bw * (0.5 + ox)), int(by + bh * (0.5 + oy))
    if kind == "fold":  # a mucosal fold over part of the polyp: dark body, light crest
        axes = (max(2, int(bw * 0.45)), max(2, int(bh * 0.2)))
        py = min(frame.shape[0] - 1, int(by + bh) + 2)
        px = min(frame.shape[1] - 1, max(0, cx))
        tone = tuple(float(v) * 0.75 for v in frame[py, px])
        cv2.ellipse(frame, (cx, cy), axes, 20.0, 0, 360, tone, -1)
        cv2.ellipse(frame, (cx, cy), axes, 20.0, 200, 340, (215, 135, 130), 1)
    else:  # an instrument tip entering from the bottom edge
        h = frame.shape[0]
        width = max(3, int(bw * 0.3))
        cv2.line(frame, (cx + width, h + 5), (cx, cy), (120, 125, 130), width)
        cv2.line(frame, (cx + width, h + 5), (cx, cy), (200, 205, 210), max(1, width // 4))


def _blur(frame: np.ndarray, kind: str, strength: float, angle: float) -> np.ndarray:
    if kind == "defocus":
        return np.asarray(cv2.GaussianBlur(frame, (0, 0), 0.6 + 1.2 * strength))
    n = 3 + 2 * round(3 * strength)  # odd motion-blur length 5..9
    kernel = np.zeros((n, n), np.float32)
    kernel[n // 2, :] = 1.0 / n
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), angle, 1.0)
    rotated = np.asarray(cv2.warpAffine(kernel, rot, (n, n)), dtype=np.float32)
    return np.asarray(cv2.filter2D(frame, -1, rotated / max(1e-6, float(rotated.sum()))))


def _camera_path(rng: np.random.Generator, frames: int, span: int) -> np.ndarray:
    """Integer window offsets ``(frames,)`` in ``[0, span]``: a smooth wandering pan.

    The speed does not depend on the timeline length (at most about
    ``span * pi / 600`` pixels per frame).
    """
    t = np.arange(frames, dtype=np.float64)
    amplitudes = rng.uniform(0.3, 1.0, size=3)
    path = np.zeros(frames, dtype=np.float64)
    for a in amplitudes:
        path += a * np.sin(2 * math.pi * t / rng.uniform(600, 2400) + rng.uniform(0, 7))
    path = 0.5 + 0.5 * path / amplitudes.sum()
    return np.round(path * span).astype(np.int64)


def _render_procedure(args: tuple[int, SynthConfig, list[PolypSpec], str]) -> dict[str, Any]:
    """Render one procedure's frames that show a polyp; return its COCO records."""
    p, config, polyps, images_dir = args
    rng = _rng(config.seed, p, 1)
    w, h = config.image_width, config.image_height
    canvas = _mucosa(rng, 2 * h, 2 * w)
    # a dark lumen or two, baked into the canvas so it pans with the mucosa
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w].astype(np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, sigma = rng.uniform(0, 2 * w), rng.uniform(0, 2 * h), rng.uniform(0.2, 0.35) * h
        canvas *= (1.0 - 0.55 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))[
            ..., None
        ]
    del yy, xx
    sprites = {spec.identity_id: _sprite(spec.look, spec.morphology) for spec in polyps}
    outlines = {spec.identity_id: _outline(spec.look) for spec in polyps}
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - 0.5 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2
    frames = config.frames_per_procedure
    path_x, path_y = _camera_path(rng, frames, w), _camera_path(rng, frames, h)
    exposure_period, exposure_phase = rng.uniform(200, 800), rng.uniform(0, 2 * math.pi)
    plans = sorted(
        ((s, n, spec) for spec in polyps for s, n in spec.runs),
        key=lambda r: (r[0], r[2].identity_id),
    )
    runs: dict[int, _Run] = {}
    boxes_per_run = [0] * len(plans)
    seq = f"{p + 1:03d}-001"
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for f in range(frames):
        active = [i for i, (s, n, _) in enumerate(plans) if s <= f < s + n]
        if not active:
            continue
        ox, oy = int(path_x[f]), int(path_y[f])
        pan = np.array([ox - path_x[max(0, f - 1)], oy - path_y[max(0, f - 1)]], dtype=np.float64)
        frame = canvas[oy : oy + h, ox : ox + w].copy()
        shown: list[tuple[_Run, tuple[float, float, float, float]]] = []
        for i in active:
            s, n, spec = plans[i]
            if i not in runs:
                runs[i] = _new_run(_rng(config.seed, p, 2, i), spec, i, s, n, config)
            run = runs[i]
            if run.ended:
                continue
            m, (x0, y0, x1, y1) = _place(run, f, pan, w, h)
            if x1 - x0 < MIN_VISIBLE_PX or y1 - y0 < MIN_VISIBLE_PX:
                run.ended = True
                continue
            edge = outlines[spec.identity_id] @ m[:, :2].T + m[:, 2]
            bx0, by0 = max(0.0, float(edge[:, 0].min())), max(0.0, float(edge[:, 1].min()))
            bx1, by1 = (
                min(float(w), float(edge[:, 0].max())),
                min(float(h), float(edge[:, 1].max())),
            )
            box = (round(bx0, 2), round(by0, 2), round(bx1 - bx0, 2), round(by1 - by0, 2))
            if min(box[2], box[3]) < MIN_VISIBLE_PX or (
                run.prev_box is not None and _iou(run.prev_box, box) < MIN_CONSECUTIVE_IOU
            ):
                run.ended = True  # keep the contract: one run = one SPEC §3 tracklet
                continue
            m[:, 2] -= (x0, y0)
            warped = cv2.warpAffine(
                sprites[spec.identity_id],
                m,
                (x1 - x0, y1 - y0),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(0, 0, 0, 1),
            )
            run.prev_box = box
            lighting = run.gain * (1 + 0.1 * math.sin((f - s) / 17.0 + i))
            roi = frame[y0:y1, x0:x1]
            roi *= warped[..., 3:]
            roi += warped[..., :3] * (lighting * np.asarray(run.cast, np.float32))
            shown.append((run, box))
        if not shown:
            continue
        for run, (bx, by, bw, bh) in shown:
            if run.light[1] < -0.1:  # specular highlight, fixed relative to the scope's light
                cv2.circle(
                    frame,
                    (int(bx + bw * (0.5 + run.light[0])), int(by + bh * (0.5 + run.light[1]))),
                    max(1, round(0.05 * min(bw, bh))),
                    (250.0, 250.0, 250.0),
                    -1,
                    lineType=cv2.LINE_AA,
                )
            if run.occluder and run.occluder[0] <= f <= run.occluder[1]:
                _occlude(frame, run, (bx, by, bw, bh))
        exposure = 1.0 + 0.08 * math.sin(2 * math.pi * f / exposure_period + exposure_phase)
        frame *= (vignette * exposure)[..., None]
        blurs = [run.blur[f] for run, _ in shown if f in run.blur]
        if blurs:
            frame = _blur(frame, *blurs[0])
        image_id = (p + 1) * 1_000_000 + f
        file_name = f"{seq}_{f:06d}.jpg"
        bgr = np.clip(frame, 0, 255).astype(np.uint8)[:, :, ::-1]
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        if not ok:
            raise RuntimeError(f"could not encode {file_name} as JPEG")
        (Path(images_dir) / file_name).write_bytes(jpeg.tobytes())
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": w,
                "height": h,
                "frame_id": f,
                "sequence_id": seq,
                "dataset_id": "synth",
            }
        )
        for j, (run, box) in enumerate(shown):
            spec = run.spec
            boxes_per_run[run.index] += 1
            annotations.append(
                {
                    "id": image_id * 100 + j,
                    "image_id": image_id,
                    "bbox": list(box),
                    "area": round(box[2] * box[3], 4),
                    "iscrowd": 0,
                    "category_id": 1,
                    "identity_id": spec.identity_id,
                    "size": spec.size_mm,
                    "histology": spec.histology,
                    "morphology": spec.morphology,
                    "location": spec.location,
                }
            )
    return {
        "procedure": p,
        "sequence_id": seq,
        "images": images,
        "annotations": annotations,
        "tracklets": sum(b > 0 for b in boxes_per_run),
    }


def split_procedures(config: SynthConfig) -> dict[str, list[int]]:
    """Procedure indices per split: disjoint, at least one each when ``n_procedures >= 3``."""
    n = config.n_procedures
    order = [int(i) for i in _rng(config.seed, 10**6 + 1).permutation(n)]
    total = sum(config.split_fractions)
    n_val = round(n * config.split_fractions[1] / total)
    n_test = round(n * config.split_fractions[2] / total)
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
        n_val = min(n_val, n - 2)
        n_test = min(n_test, n - 1 - n_val)
    n_train = max(0, n - n_val - n_test)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _balance(anns: list[dict[str, Any]]) -> dict[str, int]:
    polyps = {a["identity_id"]: a for a in anns}
    return {
        "polyps": len(polyps),
        "diminutive_le_5mm": sum(a["size"] <= 5.0 for a in polyps.values()),
        "larger_gt_5mm": sum(a["size"] > 5.0 for a in polyps.values()),
        "adenoma": sum(a["histology"] == "adenoma" for a in polyps.values()),
        "non_adenoma": sum(a["histology"] != "adenoma" for a in polyps.values()),
    }


def generate(
    out_dir: Path, config: SynthConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Write a synthetic dataset in the SPEC §2 format.

    Writes ``out_dir/images/*.jpg`` (only frames that show a polyp),
    ``out_dir/annotations/instances_{train,val,test}.json`` and
    ``out_dir/synth_report.json``. Procedures render in a process pool of
    ``config.workers``; the result does not depend on the number of workers.

    Args:
        out_dir: Dataset root; created if missing.
        config: Generator settings (default ``SynthConfig()``).
        progress: Show a tqdm bar over procedures.

    Returns:
        The report: per split the procedures (count and sequence ids), polyps,
        tracklets, frames, annotations, look-alikes, frames with two or more
        polyps and the label balance (size <= 5 mm vs > 5 mm, adenoma vs not,
        counted per polyp); plus the config and the seed.
    """
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    procedures = plan(config)
    jobs = [(p, config, procedures[p], str(out_dir / "images")) for p in range(config.n_procedures)]
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="synth procedures", unit="proc", disable=not progress)
    if config.workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(config.workers, len(jobs))) as pool:
            for res in pool.imap_unordered(_render_procedure, jobs):
                results[res["procedure"]] = res
                bar.update()
    else:
        for job in jobs:
            res = _render_procedure(job)
            results[res["procedure"]] = res
            bar.update()
    bar.close()
    report: dict[str, Any] = {"seed": config.seed, "config": asdict(config), "splits": {}}
    for split, members in split_procedures(config).items():
        images = [img for p in members for img in results[p]["images"]]
        anns = [a for p in members for a in results[p]["annotations"]]
        data = {
            "info": {
                "description": "PolypIndex synthetic colonoscopies (polypindex.synth)",
                "version": "1",
                "split": split,
                "seed": config.seed,
            },
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "polyp"}],
        }
        (out_dir / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(data, sort_keys=True)
        )
        per_image: dict[int, int] = {}
        for a in anns:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        shown = {a["identity_id"] for a in anns}
        report["splits"][split] = {
            "procedures": len(members),
            "sequence_ids": [results[p]["sequence_id"] for p in members],
            "tracklets": sum(results[p]["tracklets"] for p in members),
            "frames": len(images),
            "annotations": len(anns),
            "frames_with_several_polyps": sum(c > 1 for c in per_image.values()),
            "lookalikes": sum(
                spec.lookalike_of is not None and spec.identity_id in shown
                for p in members
                for spec in procedures[p]
            ),
            **_balance(anns),
        }
    text = json.dumps(report, indent=2, sort_keys=True)
    (out_dir / "synth_report.json").write_text(text)
    return dict(json.loads(text))  # what the file holds (tuples become lists)
