"""The issue-2 results table, end to end, on one dataset:

(a) the encoder before training (same config, same seed, random init),
(b) after self-supervised training (temporal temperature bags + MIL-NCE),
(c) the supervised upper bound (identity bags + multi-positive loss),

plus the reference rows (chance, colour histogram), each exported to ONNX and
evaluated with the product's protocols (``benchmarks.protocols.evaluate``) on the
test split, for one or more seeds (mean ± std when several).

    python -m benchmarks.results_table --data var/data/synth --out var/bench/table --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from benchmarks.protocols import evaluate, format_table
from model.coco import load_coco_split
from model.encoder import save_encoder_checkpoint
from model.export import export_onnx
from model.preprocess import CropCache
from training.datamodule import embed_tracklets_torch
from training.module import HmveModule
from training.train import TrainConfig, load_train_config, reid_threshold, train

METRICS = (
    ("retrieval", "map"),
    ("retrieval", "hr1"),
    ("retrieval", "hr5"),
    ("reid", "auroc"),
    ("reid", "aupr"),
)


def untrained_checkpoint(config: TrainConfig, out: Path) -> Path:
    """Save the encoder exactly as training would start it (seeded random init)."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = HmveModule(config.encoder, loss=config.loss, d_proj=config.d_proj)
    encoder = module.encoder.eval()
    val = load_coco_split(config.data_root, config.val_split).tracklets(config.tracklet)
    cache = CropCache(config.resolved_cache_dir, config.preprocess)
    emb = embed_tracklets_torch(encoder, val, cache, config.preprocess, config.fragment)
    threshold, f1 = reid_threshold(emb, [t.identity_id for t in val])
    path = out / "encoder.pt"
    out.mkdir(parents=True, exist_ok=True)
    save_encoder_checkpoint(
        path,
        encoder,
        config.encoder,
        config.preprocess,
        config.fragment,
        extra={
            "reid_threshold": threshold,
            "reid_f1": f1,
            "config_name": f"{config.name}-untrained",
            "epochs": 0,
        },
    )
    return path


def _train_or_reuse(config: TrainConfig, reuse: bool) -> tuple[Path, dict[str, Any]]:
    """Train, or with ``reuse`` take a finished run's ``encoder.pt`` + ``history.json``."""
    out = Path(config.out_dir)
    if reuse and (out / "encoder.pt").is_file() and (out / "history.json").is_file():
        print(f"reusing the finished run in {out}")
    else:
        t0 = time.perf_counter()
        train(config)
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    history = json.loads((out / "history.json").read_text())
    wall = out / "wall_seconds.txt"
    history["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    return out / "encoder.pt", history


def _value(row: dict[str, Any], protocol: str, metric: str) -> float | None:
    part = row.get(protocol, {})
    if metric in ("hr1", "hr5"):
        return part.get("hit_rate", {}).get(metric[2:])
    return part.get(metric)


def run(
    data: Path,
    out: Path,
    seeds: list[int],
    ssl_config: str,
    sup_config: str,
    overrides: dict[str, Any],
    reuse: bool = False,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    per_seed: list[dict[str, Any]] = []
    compute: dict[str, Any] = {}
    for seed in seeds:
        common = {
            "data_root": str(data),
            "cache_dir": str(out / "crop_cache"),
            "seed": seed,
            **overrides,
        }
        models: dict[str, Path] = {}
        ssl = load_train_config(ssl_config, {**common, "out_dir": str(out / f"seed{seed}" / "ssl")})
        sup = load_train_config(
            sup_config, {**common, "out_dir": str(out / f"seed{seed}" / "supervised")}
        )
        untrained = untrained_checkpoint(ssl, out / f"seed{seed}" / "untrained")
        ssl_ckpt, ssl_history = _train_or_reuse(ssl, reuse)
        sup_ckpt, sup_history = _train_or_reuse(sup, reuse)
        compute[f"seed{seed}"] = {"ssl": ssl_history, "supervised": sup_history}
        for name, ckpt in (
            ("untrained", untrained),
            ("self_supervised", ssl_ckpt),
            ("supervised_upper_bound", sup_ckpt),
        ):
            onnx_path = ckpt.with_suffix(".onnx")
            export_onnx(ckpt, onnx_path)
            models[name] = onnx_path
        per_seed.append(
            evaluate(
                data, "test", models, out / f"seed{seed}" / "eval", cache_dir=out / "crop_cache"
            )
        )
    names = [r["name"] for r in per_seed[0]["rows"]]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        summary[name] = {}
        for protocol, metric in METRICS:
            values = [
                v
                for res in per_seed
                for r in res["rows"]
                if r["name"] == name and (v := _value(r, protocol, metric)) is not None
            ]
            if values:
                summary[name][metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "n": len(values),
                }
    result = {
        "data": str(data),
        "seeds": seeds,
        "ssl_config": ssl_config,
        "supervised_config": sup_config,
        "overrides": overrides,
        "summary": summary,
        "per_seed": per_seed,
        "compute": compute,
        "environment": per_seed[0]["environment"],
    }
    (out / "results_table.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "results_table.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| row | mAP | HR@1 | HR@5 | AUROC | AUPR |", "|---|---|---|---|---|---|"]
    for name, metrics in result["summary"].items():
        cells = []
        for _, metric in METRICS:
            m = metrics.get(metric)
            if m is None:
                cells.append("–")
            elif m["n"] > 1:
                cells.append(f"{m['mean']:.3f} ± {m['std']:.3f}")
            else:
                cells.append(f"{m['mean']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Untrained / self-supervised / supervised table on one dataset."
    )
    parser.add_argument("--data", type=Path, default=Path("var/data/synth"))
    parser.add_argument("--out", type=Path, default=Path("var/bench/table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ssl-config", default="demo")
    parser.add_argument("--supervised-config", default="supervised")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value for both runs"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for pair in args.overrides:
        key, _, raw = pair.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    result = run(
        args.data, args.out, args.seeds, args.ssl_config, args.supervised_config, overrides
    )
    print(markdown(result))
    print(format_table(result["per_seed"][0]))


if __name__ == "__main__":
    main()
