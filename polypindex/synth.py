"""Synthetic colonoscopies: the project's own test and demo data (COCO, SPEC §2).

The generator makes retrieval a real problem rather than a trivial one:

* every procedure has its own mucosa (tone, vessel density, folds) and a camera
  that drifts over it; vessel width and texture scale are constant in pixels;
* polyp colours come from a small palette (colour alone does not identify a
  polyp): identity lives in the outline and the surface-pattern details;
* histology shows weakly (adenomas lean to a tubular pit pattern and a redder
  tone, the others to paler fine dots, with overlap); size shows weakly (the
  pixel size is size in mm times a camera distance that varies in a range);
* each polyp is seen in 1–6 tracklets with different viewpoint, distance,
  lighting, occlusion and blur; tracklets of different polyps interleave and
  overlap in time, so temporal proximity is only a noisy hint of identity;
* a fraction of polyps copy (slightly perturbed) the look of a polyp of
  another procedure: hard negatives.

Everything is deterministic per seed (each procedure draws from its own
generator seeded by ``(seed, procedure index)``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
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
LOCATIONS = ("rectum", "sigmoid", "descending", "transverse", "ascending", "cecum")
# A small palette of polyp base colours (RGB): many polyps share one.
PALETTE = np.array(
    [(214, 120, 112), (196, 96, 98), (226, 150, 134), (205, 132, 140)], dtype=np.float32
)
SPRITE = 96  # canonical sprite side, pixels
MIN_GAP = 5  # frames without the polyp between two of its tracklets


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings; validated on construction."""

    n_procedures: int = 20
    frames_per_procedure: int = 1200
    image_width: int = 320
    image_height: int = 256
    polyps_per_procedure: tuple[int, int] = (1, 5)
    tracklets_per_polyp: tuple[int, int] = (1, 6)
    tracklet_length: tuple[int, int] = (30, 150)
    lookalike_fraction: float = 0.3
    interleave: float = 0.25
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    jpeg_quality: int = 90
    seed: int = 0
    workers: int = min(2, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"SynthConfig: {msg}")

        if self.n_procedures < 1:
            raise bad(f"n_procedures must be >= 1, got {self.n_procedures}")
        if self.image_width < 64 or self.image_height < 64:
            raise bad(
                f"image size must be at least 64x64, got {self.image_width}x{self.image_height}"
            )
        for name in ("polyps_per_procedure", "tracklets_per_polyp", "tracklet_length"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise bad(f"{name} must be (low, high) with 1 <= low <= high, got {(lo, hi)}")
        if self.frames_per_procedure < self.tracklet_length[0]:
            raise bad(
                f"frames_per_procedure ({self.frames_per_procedure}) must be at least the shortest "
                f"tracklet ({self.tracklet_length[0]}); raise it or lower tracklet_length"
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
                f"split_fractions must be three non-negative numbers (train, val, test), got {self.split_fractions}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise bad(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.workers < 1:
            raise bad(f"workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class PolypLook:
    """What a polyp looks like, independent of how it is seen."""

    color: tuple[float, float, float]
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, 4, 5
    pattern: str  # "tubular" | "dots"
    pattern_freq: float
    pattern_angle: float
    pattern_seed: int
    pattern_contrast: float


@dataclass(frozen=True)
class PolypSpec:
    identity_id: str
    look: PolypLook
    size_mm: float
    histology: str
    morphology: str
    location: str
    runs: tuple[tuple[int, int], ...]  # (start frame, length)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _random_look(rng: np.random.Generator, adenoma: bool) -> PolypLook:
    base = PALETTE[rng.integers(len(PALETTE))].copy()
    if adenoma:  # weakly redder
        base += np.array([8.0, -10.0, -8.0], dtype=np.float32)
    else:  # weakly paler
        base += np.array([6.0, 8.0, 8.0], dtype=np.float32)
    base += rng.normal(0, 6, size=3).astype(np.float32)
    tubular = rng.random() < (0.7 if adenoma else 0.3)
    return PolypLook(
        color=tuple(float(c) for c in np.clip(base, 0, 255)),  # type: ignore[arg-type]
        harmonics=tuple(
            (float(rng.uniform(0.02, 0.14)), float(rng.uniform(0, 2 * math.pi))) for _ in range(4)
        ),
        pattern="tubular" if tubular else "dots",
        pattern_freq=float(rng.uniform(0.12, 0.3) if tubular else rng.uniform(0.25, 0.5)),
        pattern_angle=float(rng.uniform(0, math.pi)),
        pattern_seed=int(rng.integers(2**31)),
        pattern_contrast=float(rng.uniform(0.12, 0.3)),
    )


def _perturb(look: PolypLook, rng: np.random.Generator) -> PolypLook:
    return replace(
        look,
        color=tuple(float(np.clip(c + rng.normal(0, 4), 0, 255)) for c in look.color),  # type: ignore[arg-type]
        harmonics=tuple(
            (max(0.0, a + float(rng.normal(0, 0.015))), p + float(rng.normal(0, 0.2)))
            for a, p in look.harmonics
        ),
        pattern_freq=look.pattern_freq * float(rng.uniform(0.92, 1.08)),
        pattern_angle=look.pattern_angle + float(rng.normal(0, 0.15)),
        pattern_seed=int(rng.integers(2**31)),
    )


def _timeline(
    rng: np.random.Generator, runs_per_polyp: list[int], config: SynthConfig
) -> list[list[tuple[int, int]]]:
    """Lay the polyps' runs on the procedure timeline, as an endoscopist's visits.

    A polyp's runs are visited one after the other (the camera loses it and finds
    it again), polyp after polyp; with probability ``interleave`` two neighbouring
    visits swap (the camera goes back to an earlier polyp) and, when they belong to
    different polyps, with probability ``interleave / 2`` the next visit starts
    before the previous one ends (two polyps in view). Visits that do not fit in
    the procedure are dropped, never a polyp's last one while another can go.

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
        -int(rng.integers(5, 21))
        if visits[i] != visits[i - 1] and rng.random() < config.interleave / 2
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
        if drop < len(gaps) and drop > 0 and gaps[drop] < 0 and visits[drop] == visits[drop - 1]:
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
    """Decide every procedure's polyps (looks, labels, runs); cheap and deterministic."""
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
            diminutive = rng.random() < 0.4
            size = float(rng.uniform(2.0, 5.0) if diminutive else rng.uniform(5.5, 20.0))
            runs = tuple(timeline[j])
            if not runs:
                continue
            polyps.append(
                PolypSpec(
                    identity_id=f"{p + 1:03d}-001_p{j + 1}",
                    look=_random_look(rng, histology == "adenoma"),
                    size_mm=round(size, 1),
                    histology=histology,
                    morphology=str(rng.choice(MORPHOLOGIES)),
                    location=str(rng.choice(LOCATIONS)),
                    runs=runs,
                )
            )
        procedures.append(polyps)
    # hard negatives: copy the look of a polyp of another procedure
    rng = _rng(config.seed, 10**6)
    if config.n_procedures > 1:
        for p, polyps in enumerate(procedures):
            for j, spec in enumerate(polyps):
                if rng.random() < config.lookalike_fraction:
                    other = int(rng.choice([q for q in range(config.n_procedures) if q != p]))
                    source = procedures[other][int(rng.integers(len(procedures[other])))]
                    polyps[j] = replace(spec, look=_perturb(source.look, rng))
    return procedures


# ----------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((cells, max(2, cells * w // h))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _mucosa(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A large mucosa canvas (RGB float32) the camera window moves over."""
    tone = np.array(
        [rng.uniform(185, 225), rng.uniform(75, 115), rng.uniform(70, 105)], dtype=np.float32
    )
    low = _smooth_noise(rng, h, w, 6)[..., None]
    canvas = tone * (0.8 + 0.35 * low)
    # folds: soft dark bands
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):
        angle, freq, phase = (
            rng.uniform(0, math.pi),
            rng.uniform(0.01, 0.03),
            rng.uniform(0, 2 * math.pi),
        )
        band = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq + phase)
        canvas *= (1.0 - 0.12 * np.clip(band, 0, 1) ** 4)[..., None]
    # vessels: thin branching dark-red random walks, constant width in pixels
    vessels = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(25, 60))):
        pts = [rng.uniform((0, 0), (w, h))]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(8, 30))):
            heading += rng.normal(0, 0.5)
            pts.append(pts[-1] + 6.0 * np.array([math.cos(heading), math.sin(heading)]))
        cv2.polylines(
            vessels,
            [np.asarray(pts, np.int32)],
            False,
            float(rng.uniform(0.4, 1.0)),
            thickness=int(rng.integers(1, 3)),
        )
    vessel_mask = cv2.GaussianBlur(vessels, (3, 3), 0)[..., None]
    canvas = (
        canvas * (1 - 0.35 * vessel_mask) + np.array([150, 30, 40], np.float32) * 0.35 * vessel_mask
    )
    canvas += rng.normal(0, 3, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255)


def _sprite(look: PolypLook) -> tuple[np.ndarray, np.ndarray]:
    """The polyp at canonical size: RGB float32 (S, S, 3) and alpha (S, S)."""
    s = SPRITE
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dx, dy = xx - c, yy - c
    theta = np.arctan2(dy, dx)
    radius = np.hypot(dx, dy) / (0.33 * s)
    outline = 1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(look.harmonics))
    inside = radius / outline
    alpha = np.clip((1.0 - inside) * 12.0, 0, 1).astype(np.float32)
    # dome shading + surface pattern
    dome = np.sqrt(np.clip(1.0 - inside**2, 0, 1))
    rng = np.random.default_rng(look.pattern_seed)
    if look.pattern == "tubular":
        u = dx * math.cos(look.pattern_angle) + dy * math.sin(look.pattern_angle)
        warp = 6.0 * _smooth_noise(rng, s, s, 4)
        pattern = 0.5 + 0.5 * np.sin((u + warp * 4) * look.pattern_freq * 2)
    else:
        dots = (rng.random((s, s)) < look.pattern_freq * 0.12).astype(np.float32)
        pattern = 1.0 - cv2.GaussianBlur(dots, (5, 5), 1.2) * 4
    detail = _smooth_noise(rng, s, s, 8)
    shade = (
        (0.72 + 0.35 * dome)
        * (1 - look.pattern_contrast * (1 - np.clip(pattern, 0, 1)))
        * (0.92 + 0.16 * detail)
    )
    rgb = np.asarray(look.color, np.float32) * shade[..., None]
    return np.clip(rgb, 0, 255), alpha


@dataclass
class _RunState:
    spec: PolypSpec
    start: int
    length: int
    center: np.ndarray
    velocity: np.ndarray
    ppm: float
    angle: float
    spin: float
    gain: float
    occluder: tuple[int, int, float, float] | None  # (first, last frame, offset x, offset y)
    blur_frames: frozenset[int]


def _new_run(
    rng: np.random.Generator, spec: PolypSpec, start: int, length: int, w: int, h: int
) -> _RunState:
    ppm = float(rng.uniform(2.6, 4.8))  # camera distance: pixels per millimetre
    diameter = spec.size_mm * ppm
    margin = diameter * 0.7 + 4
    center = rng.uniform(
        (margin, margin), (max(margin + 1, w - margin), max(margin + 1, h - margin))
    )
    speed = max(0.15, 0.05 * diameter)
    occ = None
    if rng.random() < 0.35:
        first = start + int(rng.integers(0, max(1, length - 10)))
        occ = (
            first,
            first + int(rng.integers(8, 30)),
            float(rng.uniform(-0.6, 0.6)),
            float(rng.uniform(-0.6, 0.6)),
        )
    blur = frozenset(
        start + int(i)
        for i in rng.choice(length, size=int(length * rng.uniform(0, 0.2)), replace=False)
    )
    return _RunState(
        spec=spec,
        start=start,
        length=length,
        center=center.astype(np.float64),
        velocity=rng.normal(0, speed, size=2),
        ppm=ppm,
        angle=float(rng.uniform(0, 360)),
        spin=float(rng.normal(0, 0.8)),
        gain=float(rng.uniform(0.8, 1.2)),
        occluder=occ,
        blur_frames=blur,
    )


def _render_procedure(args: tuple[int, SynthConfig, list[PolypSpec], str]) -> dict[str, Any]:
    p, config, polyps, images_dir = args
    rng = _rng(config.seed, p, 1)
    w, h = config.image_width, config.image_height
    canvas = _mucosa(rng, h * 2, w * 2)
    sprites = {spec.identity_id: _sprite(spec.look) for spec in polyps}
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = (1.0 - 0.45 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2)[
        ..., None
    ]
    cam_phase = rng.uniform(0, 2 * math.pi, size=4)
    runs = sorted(
        ((s, n, spec) for spec in polyps for s, n in spec.runs),
        key=lambda r: (r[0], r[2].identity_id),
    )
    states: dict[int, _RunState] = {}
    run_rngs = {i: _rng(config.seed, p, 2, i) for i in range(len(runs))}
    seq = f"{p + 1:03d}-001"
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for f in range(config.frames_per_procedure):
        active = [i for i, (s, n, _) in enumerate(runs) if s <= f < s + n]
        if not active:
            continue
        t = f / max(1, config.frames_per_procedure - 1)
        ox = int(
            (w / 2)
            * (
                1
                + 0.9 * math.sin(2 * math.pi * t * 1.3 + cam_phase[0]) * math.cos(cam_phase[1] + t)
            )
        )
        oy = int(
            (h / 2)
            * (
                1
                + 0.9 * math.sin(2 * math.pi * t * 0.9 + cam_phase[2]) * math.cos(cam_phase[3] + t)
            )
        )
        frame = canvas[oy : oy + h, ox : ox + w].copy()
        boxes: list[tuple[str, list[float], _RunState]] = []
        for i in active:
            s, n, spec = runs[i]
            r = run_rngs[i]
            if i not in states:
                states[i] = _new_run(r, spec, s, n, w, h)
            st = states[i]
            k = f - s
            diameter = spec.size_mm * st.ppm * (1 + 0.15 * math.sin(k / 25.0 + i))
            st.velocity = 0.9 * st.velocity + r.normal(0, 0.08 * max(1.0, diameter / 20), size=2)
            margin = diameter * 0.6 + 2
            st.center = np.clip(st.center + st.velocity, (margin, margin), (w - margin, h - margin))
            st.angle += st.spin
            scale = diameter / (0.66 * SPRITE)
            rgb, alpha = sprites[spec.identity_id]
            m = np.asarray(
                cv2.getRotationMatrix2D(((SPRITE - 1) / 2, (SPRITE - 1) / 2), st.angle, scale),
                np.float64,
            )
            m[:, 2] = m[:, 2] + st.center - (SPRITE - 1) / 2
            a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR)
            ys, xs = np.nonzero(a > 0.5)
            if len(xs) < 4:
                continue
            x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
            sl = (slice(y0, y1), slice(x0, x1))
            col = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR)[sl]
            lighting = st.gain * (1 + 0.1 * math.sin(k / 17.0))
            a_roi = a[sl][..., None]
            frame[sl] = frame[sl] * (1 - a_roi) + col * lighting * a_roi
            boxes.append(
                (spec.identity_id, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], st)
            )
        for _, box, st in boxes:
            if (
                st.occluder and st.occluder[0] <= f <= st.occluder[1]
            ):  # a fold/instrument over part of it
                bx, by, bw, bh = box
                cx, cy = (
                    int(bx + bw * (0.5 + st.occluder[2])),
                    int(by + bh * (0.5 + st.occluder[3])),
                )
                cv2.ellipse(
                    frame,
                    (cx, cy),
                    (max(2, int(bw * 0.3)), max(2, int(bh * 0.18))),
                    30.0,
                    0,
                    360,
                    (120, 45, 50),
                    -1,
                )
            if rng.random() < 0.3:  # specular highlight
                bx, by, bw, bh = box
                cv2.circle(
                    frame,
                    (int(bx + bw * rng.uniform(0.2, 0.8)), int(by + bh * rng.uniform(0.2, 0.8))),
                    int(rng.integers(1, 3)),
                    (255, 255, 255),
                    -1,
                )
        frame *= vignette
        if any(f in st.blur_frames for _, _, st in boxes):
            frame = cv2.blur(frame, (5, 1))
        image_id = (p + 1) * 1_000_000 + f
        file_name = f"{seq}_{f:06d}.jpg"
        bgr = np.clip(frame, 0, 255).astype(np.uint8)[:, :, ::-1]
        cv2.imwrite(
            str(Path(images_dir) / file_name), bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
        )
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
        for j, (ident, box, st) in enumerate(boxes):
            spec = st.spec
            annotations.append(
                {
                    "id": image_id * 10 + j,
                    "image_id": image_id,
                    "bbox": [round(v, 2) for v in box],
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                    "category_id": 1,
                    "identity_id": ident,
                    "size": spec.size_mm,
                    "histology": spec.histology,
                    "morphology": spec.morphology,
                    "location": spec.location,
                }
            )
    return {"procedure": p, "sequence_id": seq, "images": images, "annotations": annotations}


def split_procedures(config: SynthConfig) -> dict[str, list[int]]:
    """Procedure indices per split (disjoint; at least one each when n >= 3)."""
    n = config.n_procedures
    order = [int(i) for i in _rng(config.seed, 10**6 + 1).permutation(n)]
    total = sum(config.split_fractions)
    n_val = round(n * config.split_fractions[1] / total)
    n_test = round(n * config.split_fractions[2] / total)
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = max(0, n - n_val - n_test)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _balance(anns: list[dict[str, Any]]) -> dict[str, Any]:
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
    """Write ``out_dir/images/*.jpg`` and ``out_dir/annotations/instances_{train,val,test}.json``.

    Returns:
        The report also written to ``out_dir/synth_report.json``: counts and label
        balance per split, the config and the seed.
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
                "description": "PolypIndex synthetic colonoscopies",
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
        n_tracklets = sum(len(spec.runs) for p in members for spec in procedures[p])
        report["splits"][split] = {
            "procedures": len(members),
            "sequence_ids": [results[p]["sequence_id"] for p in members],
            "tracklets": n_tracklets,
            "frames": len(images),
            "annotations": len(anns),
            **(_balance(anns) if anns else {"polyps": 0}),
        }
    (out_dir / "synth_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report
