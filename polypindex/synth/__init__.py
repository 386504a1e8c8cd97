"""Synthetic colonoscopies: the project's own test and demo data (COCO, docs/method.md#data-format).

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

Within a tracklet, consecutive boxes overlap with IoU >= 0.5, so the
trackleting rule (docs/method.md#tracklets) (gap 1, IoU 0.1) recovers exactly one tracklet per
generated
run. Everything is deterministic per seed: each procedure draws from its own
generator seeded by ``(seed, procedure index)``, so the worker order does not
matter and the same seed gives byte-identical annotations and JPEGs.

Named settings (:data:`SYNTH_PRESETS`, ``polypindex synth --preset NAME``): ``default``,
and ``shifted`` — another seed, palette (:data:`PALETTES`), polyp count, interleave and
camera speed — the generalisation check of docs/results.md.
"""

from polypindex.synth.config import (
    DIMINUTIVE_FRACTION,
    HISTOLOGIES,
    LOCATIONS,
    MIN_CONSECUTIVE_IOU,
    MIN_GAP,
    MORPHOLOGIES,
    PALETTES,
    PATTERNS,
    SYNTH_PRESETS,
    PolypLook,
    PolypSpec,
    SynthConfig,
    synth_preset,
)
from polypindex.synth.plan import plan, split_procedures
from polypindex.synth.writer import generate

__all__ = [
    "DIMINUTIVE_FRACTION",
    "HISTOLOGIES",
    "LOCATIONS",
    "MIN_CONSECUTIVE_IOU",
    "MIN_GAP",
    "MORPHOLOGIES",
    "PALETTES",
    "PATTERNS",
    "SYNTH_PRESETS",
    "PolypLook",
    "PolypSpec",
    "SynthConfig",
    "generate",
    "plan",
    "split_procedures",
    "synth_preset",
]
