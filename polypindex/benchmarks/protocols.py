"""The paper's evaluation protocols (docs/method.md#evaluation-protocols) over a dataset split,
for one or more
ONNX encoders plus the reference rows (chance, colour histogram).

Each tracklet is one item, embedded whole with the same functions the product
uses (``load_coco_split`` → ``CropCache``/``normalize`` → the encoder of
:func:`model.runtime.loader.layout_encoder`, on the runtime the service would use).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from polypindex.benchmarks.env import environment
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import (
    WHOLE_TRACKLET,
    FragmentConfig,
    PreprocessConfig,
    TrackletConfig,
)
from polypindex.model.data.embedding import cached_sequences, selected_frames
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.data.tracklets import Tracklet
from polypindex.model.runtime.base import EncoderBase
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.evaluation import (
    MAP_RULES,
    chance_retrieval_map,
    color_histogram_embedding,
    reid_metrics,
    retrieval_metrics,
)
from polypindex.model.scoring.metrics import chance_average_precision
from polypindex.training.plots import save_curves_png

HISTOGRAM_CROP = PreprocessConfig(im_size=64)


def embed_tracklets_onnx(
    encoder: EncoderBase, tracklets: list[Tracklet], cache_dir: Path, progress: bool = True
) -> np.ndarray:
    """Embed each tracklet whole with the encoder's own preprocessing → (N, D)."""
    cache = CropCache(cache_dir, encoder.preprocess)
    seqs = []
    for t in tqdm(tracklets, desc="crop", disable=not progress, leave=False):
        (crops,) = cached_sequences(t, [selected_frames(len(t), encoder.fragment)], cache)
        seqs.append(normalize(crops, encoder.preprocess))
    return encoder.embed_sequences(seqs)


def color_histogram_tracklets(
    tracklets: list[Tracklet], cache_dir: Path, stride: int = 4
) -> np.ndarray:
    """The non-learned reference row: centre-of-crop RGB histograms → (N, 512)."""
    cache = CropCache(cache_dir, HISTOGRAM_CROP)
    every = FragmentConfig(stride=stride, fragment_length=WHOLE_TRACKLET, max_frames=0)
    return np.stack(
        [
            color_histogram_embedding(
                cached_sequences(t, [selected_frames(len(t), every)], cache)[0]
            )
            for t in tracklets
        ]
    )


def _evaluate_embeddings(
    name: str,
    emb: np.ndarray,
    identities: list[str],
    protocols: Iterable[str],
    out: Path,
    map_rule: str = "ours",
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    if "retrieval" in protocols:
        row["retrieval"] = retrieval_metrics(emb, identities, map_rule=map_rule).to_json_dict()
    if "reid" in protocols:
        reid = reid_metrics(emb, identities)
        row["reid"] = reid.to_json_dict()
        row["reid"]["curves"] = [str(p) for p in save_curves_png(reid, out / f"{name}", title=name)]
    return row


def evaluate(
    data: Path,
    split: str,
    models: Mapping[str, Path],
    out: Path,
    protocols: Iterable[str] = ("retrieval", "reid"),
    reference_rows: bool = True,
    tracklet_config: TrackletConfig | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    map_rule: str = "ours",
) -> dict[str, Any]:
    """Run the protocols on ``data``'s ``split`` for each named ONNX encoder.

    ``map_rule`` (``ours`` | ``reference`` | ``both``, model.scoring.evaluation.MAP_RULES) adds
    ``retrieval.map_reference``, the mAP under the reference's torchmetrics rule, to each
    embedding row (docs/method.md#evaluation-protocols).

    Returns (and writes to ``out/results.json``) a dict with the environment,
    the dataset summary and one row per model / reference.
    """
    if map_rule not in MAP_RULES:
        raise InvalidInputError(f"map_rule must be one of {list(MAP_RULES)}, got {map_rule!r}")
    protocols = tuple(protocols)
    unknown = set(protocols) - {"retrieval", "reid"}
    if unknown:
        raise InvalidInputError(
            f"unknown protocol(s) {sorted(unknown)}; choose retrieval and/or reid"
        )
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or out / "crop_cache"
    tracklets = load_coco_split(data, split).tracklets(tracklet_config or TrackletConfig())
    if len(tracklets) < 2:
        raise InvalidInputError(
            f"{data} split {split!r} has {len(tracklets)} tracklet(s); need at least 2"
        )
    identities = [str(t.identity_id) for t in tracklets]
    rows = []
    if reference_rows:
        chance: dict[str, Any] = {"name": "chance"}
        if "retrieval" in protocols:
            chance["retrieval"] = {"map": chance_retrieval_map(identities)}
        if "reid" in protocols:
            n_pos = sum(a == b for i, a in enumerate(identities) for b in identities[i + 1 :])
            n_pairs = len(identities) * (len(identities) - 1) // 2
            chance["reid"] = {"auroc": 0.5, "aupr": chance_average_precision(n_pairs, n_pos)}
        rows.append(chance)
        t0 = time.perf_counter()
        hist = color_histogram_tracklets(tracklets, cache_dir)
        row = _evaluate_embeddings("color_histogram", hist, identities, protocols, out, map_rule)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    for name, path in models.items():
        encoder = layout_encoder(Layout(), path)
        t0 = time.perf_counter()
        emb = embed_tracklets_onnx(encoder, tracklets, cache_dir, progress=progress)
        row = _evaluate_embeddings(name, emb, identities, protocols, out, map_rule)
        row.update(
            model=str(path), encoder_version=encoder.version, seconds=time.perf_counter() - t0
        )
        rows.append(row)
    results = {
        "data": str(data),
        "split": split,
        "n_tracklets": len(tracklets),
        "n_identities": len(set(identities)),
        "environment": environment(),
        "map_rule": map_rule,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def format_table(results: Mapping[str, Any], protocol: str | None = None) -> str:
    """A Markdown table of the rows (mAP, HR@1, HR@5, AUROC, AUPR as available).

    With ``map_rule`` ``reference`` the mAP column is the torchmetrics rule's
    (``retrieval.map_reference``; the chance row keeps ours, the only one defined for
    it); with ``both`` the two come side by side."""
    rule = results.get("map_rule", "ours")
    maps = {"ours": ["mAP"], "reference": ["mAP (torchmetrics rule)"]}.get(
        rule, ["mAP", "mAP (torchmetrics rule)"]
    )
    header = "| row | " + " | ".join(maps) + " | HR@1 | HR@5 | AUROC | AUPR |"
    lines = [header, "|---" * (len(maps) + 5) + "|"]

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) else "–"

    for row in results["rows"]:
        r = row.get("retrieval", {}) if protocol in (None, "retrieval") else {}
        d = row.get("reid", {}) if protocol in (None, "reid") else {}
        hr = r.get("hit_rate", {})
        map_cells = {
            "ours": [r.get("map")],
            "reference": [r.get("map_reference", r.get("map"))],
        }.get(rule, [r.get("map"), r.get("map_reference")])
        lines.append(
            f"| {row['name']} | {' | '.join(fmt(m) for m in map_cells)} | "
            f"{fmt(hr.get('1', hr.get(1)))} | "
            f"{fmt(hr.get('5', hr.get(5)))} | {fmt(d.get('auroc'))} | {fmt(d.get('aupr'))} |"
        )
    return "\n".join(lines)
