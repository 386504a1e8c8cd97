"""Pixels that do not move on their own: a procedure's mucosa canvas (tone, folds,
vessels, glints) and a polyp's sprite (outline, dome, pit pattern, shadow).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from polypindex.synth.config import SPRITE, SPRITE_RADIUS, PolypLook


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


def mucosa(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def outline(look: PolypLook, points: int = 180) -> np.ndarray:
    """The polyp's edge (where alpha = 0.5) in sprite pixels, float64 ``(points, 2)``."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    radius = 1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(look.harmonics))
    r = 0.95 * SPRITE_RADIUS * radius
    c = (SPRITE - 1) / 2
    return np.stack([c + r * np.cos(theta), c + r * np.sin(theta)], axis=1)


def sprite(look: PolypLook, morphology: str) -> np.ndarray:
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
