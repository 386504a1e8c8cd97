"""Planning: every procedure's polyps (looks, labels, runs on the timeline) and the
train/val/test split of the procedures. Cheap and deterministic; no pixels.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from polypindex.synth.config import (
    DIMINUTIVE_FRACTION,
    HISTOLOGIES,
    HISTOLOGY_P,
    LOCATIONS,
    MIN_GAP,
    MORPHOLOGIES,
    MORPHOLOGY_P,
    PALETTE,
    PALETTES,
    PATTERN_P_ADENOMA,
    PATTERN_P_OTHER,
    PATTERNS,
    POLYP_COLOR_SD,
    PolypLook,
    PolypSpec,
    SynthConfig,
    seeded_rng,
)


def _random_look(
    rng: np.random.Generator, adenoma: bool, palette: np.ndarray = PALETTE
) -> PolypLook:
    base = palette[rng.integers(len(palette))].copy()
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
        rng = seeded_rng(config.seed, p, 0)
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
            look = _random_look(rng, histology == "adenoma", PALETTES[config.palette])
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
    rng = seeded_rng(config.seed, 10**6)
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


def split_procedures(config: SynthConfig) -> dict[str, list[int]]:
    """Procedure indices per split: disjoint, at least one each when ``n_procedures >= 3``."""
    n = config.n_procedures
    order = [int(i) for i in seeded_rng(config.seed, 10**6 + 1).permutation(n)]
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
