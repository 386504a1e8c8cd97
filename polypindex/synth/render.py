"""Rendering one procedure: the camera pans over its mucosa, each planned run moves,
turns, is lit, occluded and blurred, and every frame showing a polyp is written as
a JPEG with its COCO records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from polypindex.synth.config import (
    MIN_CONSECUTIVE_IOU,
    MIN_VISIBLE_PX,
    PX_PER_MM,
    RUN_CAST_SD,
    SPRITE,
    SPRITE_RADIUS,
    PolypSpec,
    SynthConfig,
    seeded_rng,
)
from polypindex.synth.textures import mucosa, outline, sprite


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


def _camera_path(
    rng: np.random.Generator, frames: int, span: int, speed: float = 1.0
) -> np.ndarray:
    """Integer window offsets ``(frames,)`` in ``[0, span]``: a smooth wandering pan.

    The speed does not depend on the timeline length (at most about
    ``speed * span * pi / 600`` pixels per frame).
    """
    t = np.arange(frames, dtype=np.float64)
    amplitudes = rng.uniform(0.3, 1.0, size=3)
    path = np.zeros(frames, dtype=np.float64)
    for a in amplitudes:
        period = rng.uniform(600, 2400) / speed  # speed 1: the period itself, bit for bit
        path += a * np.sin(2 * math.pi * t / period + rng.uniform(0, 7))
    path = 0.5 + 0.5 * path / amplitudes.sum()
    return np.round(path * span).astype(np.int64)


def render_procedure(args: tuple[int, SynthConfig, list[PolypSpec], str]) -> dict[str, Any]:
    """Render one procedure's frames that show a polyp; return its COCO records."""
    p, config, polyps, images_dir = args
    rng = seeded_rng(config.seed, p, 1)
    w, h = config.image_width, config.image_height
    canvas = mucosa(rng, 2 * h, 2 * w)
    # a dark lumen or two, baked into the canvas so it pans with the mucosa
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w].astype(np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, sigma = rng.uniform(0, 2 * w), rng.uniform(0, 2 * h), rng.uniform(0.2, 0.35) * h
        canvas *= (1.0 - 0.55 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))[
            ..., None
        ]
    del yy, xx
    sprites = {spec.identity_id: sprite(spec.look, spec.morphology) for spec in polyps}
    outlines = {spec.identity_id: outline(spec.look) for spec in polyps}
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - 0.5 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2
    frames = config.frames_per_procedure
    speed = config.camera_speed
    path_x, path_y = _camera_path(rng, frames, w, speed), _camera_path(rng, frames, h, speed)
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
                runs[i] = _new_run(seeded_rng(config.seed, p, 2, i), spec, i, s, n, config)
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
                run.ended = (
                    True  # keep the contract: one run = one tracklet (docs/method.md#tracklets)
                )
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
