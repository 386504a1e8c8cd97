"""Is histology visible at the probe encoders' crop size? A non-learned check
(docs/results.md, "Why histology is not learnable from these crops").

The generator shows histology through the polyp's surface pattern (adenomas lean to
tubular grooves of higher contrast) and a weak colour shift (``polypindex/synth/plan.py``).
For each crop setting, every polyp gets two hand-made features from a few frames of each of
its tracklets, measured on the central box region of the crop (the polyp itself):

- ``texture``: the standard deviation of the luminance Laplacian divided by the mean
  luminance (the groove/pit energy),
- ``colour``: the green-to-red ratio of the mean colour (adenomas are rendered redder),

and the AUROC of each feature for adenoma vs not, over all polyps and over diminutive
(≤ 5 mm) ones. A feature whose AUROC stays near 0.5 carries no histology at that size.

    python -m polypindex.benchmarks.histology_resolution --data DIR [--data DIR2] \\
        --out benchmarks/results/histology_resolution.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.preprocess import CropCache
from polypindex.model.scoring.metrics import roc_auc

SETTINGS = ((64, 5.0), (64, 2.5), (128, 5.0), (128, 2.5))
"""(im_size, bbox_scale_factor): the product's probe crops are 64 px at 5×."""


def polyp_features(crops: np.ndarray, scale: float) -> tuple[float, float]:
    """``(texture, colour)`` of one tracklet's crops ``(s, H, W, 3)`` uint8 (module doc)."""
    x = crops.astype(np.float64)
    _, h, w, _ = x.shape
    bh, bw = max(3, round(h / scale)), max(3, round(w / scale))
    y0, x0 = (h - bh) // 2, (w - bw) // 2
    box = x[:, y0 : y0 + bh, x0 : x0 + bw, :]
    lum = box @ np.array([0.299, 0.587, 0.114])
    lap = (
        -4 * lum[:, 1:-1, 1:-1]
        + lum[:, :-2, 1:-1]
        + lum[:, 2:, 1:-1]
        + lum[:, 1:-1, :-2]
        + lum[:, 1:-1, 2:]
    )
    texture = float(np.mean(lap.std(axis=(1, 2)) / np.maximum(lum.mean(axis=(1, 2)), 1.0)))
    mean = box.reshape(-1, 3).mean(axis=0)
    return texture, float(mean[1] / max(mean[0], 1.0))


def measure(
    data_dirs: list[Path], frames_per_tracklet: int = 4, cache_root: Path | None = None
) -> dict[str, Any]:
    rows = []
    tracklets = [
        (d, f"{d.name}/{t.identity_id}", t)
        for d in data_dirs
        for split in ("train", "val", "test")
        for t in load_coco_split(d, split).tracklets()
    ]
    labels = _labels(data_dirs)
    for im_size, scale in SETTINGS:
        t0 = time.perf_counter()
        config = PreprocessConfig(im_size=im_size, bbox_scale_factor=scale)
        feats: dict[str, list[tuple[float, float]]] = {}
        for d, key, t in tracklets:
            folder = (cache_root or d / ".crop_cache_histology") / f"{im_size}_{scale}"
            cache = CropCache(folder, config)
            idx = np.unique(np.linspace(0, len(t) - 1, frames_per_tracklet).round().astype(int))
            crops = cache.get([t.image_paths[int(i)] for i in idx], t.boxes[idx])
            feats.setdefault(key, []).append(polyp_features(crops, scale))
        keys = sorted(k for k in feats if k in labels)
        y = np.array([labels[k]["adenoma"] for k in keys])
        dim = np.array([labels[k]["diminutive"] for k in keys])
        row: dict[str, Any] = {
            "im_size": im_size,
            "bbox_scale_factor": scale,
            "polyp_px_in_crop": im_size / scale,  # the box spans 1/scale of the crop
            "n_polyps": len(keys),
            "n_adenoma": int(y.sum()),
            "n_diminutive": int(dim.sum()),
            "seconds": 0.0,
        }
        for j, name in enumerate(("texture", "colour")):
            v = np.array([np.mean([f[j] for f in feats[k]]) for k in keys])
            # colour: green/red is LOWER for adenomas (redder), so score = -v
            score = v if name == "texture" else -v
            row[f"auroc_{name}"] = roc_auc(score, y)
            row[f"auroc_{name}_diminutive"] = roc_auc(score[dim], y[dim])
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return {
        "data": [str(d) for d in data_dirs],
        "frames_per_tracklet": frames_per_tracklet,
        "median_polyp_box_px_in_frame": float(
            np.median([v["median_box_px"] for v in labels.values()])
        ),
        "median_diminutive_box_px_in_frame": float(
            np.median([v["median_box_px"] for v in labels.values() if v["diminutive"]])
        ),
        "rows": rows,
        "environment": environment(),
    }


def _labels(data_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Per polyp (``dir/identity``): adenoma, diminutive and its median box width in the frame."""
    out: dict[str, dict[str, Any]] = {}
    widths: dict[str, list[float]] = {}
    for d in data_dirs:
        for split in ("train", "val", "test"):
            doc = json.loads((d / "annotations" / f"instances_{split}.json").read_text())
            for a in doc["annotations"]:
                key = f"{d.name}/{a['identity_id']}"
                out[key] = {
                    "adenoma": int(a["histology"] == "adenoma"),
                    "diminutive": bool(float(a["size"]) <= 5.0),
                }
                widths.setdefault(key, []).append(float(a["bbox"][2]))
    for key, w in widths.items():
        out[key]["median_box_px"] = float(np.median(w))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, default=Path("var/bench/histology_resolution.json"))
    parser.add_argument("--frames-per-tracklet", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.data, args.frames_per_tracklet, args.cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["rows"], indent=2))


if __name__ == "__main__":
    main()
