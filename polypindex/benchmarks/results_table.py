"""The results table, end to end, on one dataset:

(a) the encoder before training (same config as the first trained row, same seed,
    random init),
(b) one row per trained config (``--row NAME=CONFIG``, repeatable; default: the
    method, ``self_supervised=demo``, and ``supervised_upper_bound=supervised``),
(c) one row per already exported encoder (``--model NAME=PATH``; ``{seed}`` in
    the path is replaced by the seed, e.g. a frame-mean baseline per seed),

plus the reference rows (chance, colour histogram), each exported to ONNX and
evaluated with the product's protocols (``benchmarks.protocols.evaluate``) on the
test split, for one or more seeds (mean ± std when several), and a plot of the
validation mAP over epochs of every trained row (mean over seeds).

    python -m polypindex.benchmarks.results_table --data var/data/synth --out var/bench/table --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from polypindex.benchmarks.protocols import evaluate, format_table
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import parse_value
from polypindex.model.data.preprocess import CropCache
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.nets.export import export_onnx
from polypindex.training.datamodule import embed_tracklets_torch
from polypindex.training.module import HmveModule
from polypindex.training.plots import pyplot
from polypindex.training.train import reid_threshold, train
from polypindex.training.train_config import TrainConfig, load_train_config

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


DEFAULT_ROWS = (("self_supervised", "demo"), ("supervised_upper_bound", "supervised"))


def run(
    data: Path,
    out: Path,
    seeds: list[int],
    rows: list[tuple[str, str]],
    overrides: dict[str, Any],
    reuse: bool = False,
    exported: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Train ``rows`` (name, config) per seed, evaluate them with the untrained
    encoder and the ``exported`` (name, ONNX path with ``{seed}``) encoders."""
    if not rows:
        raise ValueError("at least one trained row is needed (it also defines the untrained row)")
    out.mkdir(parents=True, exist_ok=True)
    per_seed: list[dict[str, Any]] = []
    compute: dict[str, Any] = {}
    for seed in seeds:
        common = {
            "data_root": str(data),
            "cache_dir": str(out / "crop_cache"),
            "seed": seed,
            **{k: _with_seed(v, seed) for k, v in overrides.items()},
        }
        configs = []
        for name, spec in rows:
            config_name, row_overrides = _row_spec(spec)
            row_overrides = {k: _with_seed(v, seed) for k, v in row_overrides.items()}
            out_dir = str(out / f"seed{seed}" / name)
            configs.append(
                (
                    name,
                    load_train_config(config_name, {**common, **row_overrides, "out_dir": out_dir}),
                )
            )
        models: dict[str, Path] = {}
        checkpoints = {
            "untrained": untrained_checkpoint(configs[0][1], out / f"seed{seed}" / "untrained")
        }
        compute[f"seed{seed}"] = {}
        for name, config in configs:
            checkpoints[name], compute[f"seed{seed}"][name] = _train_or_reuse(config, reuse)
        for name, ckpt in checkpoints.items():
            onnx_path = ckpt.with_suffix(".onnx")
            export_onnx(ckpt, onnx_path)
            models[name] = onnx_path
        for name, template in exported or []:
            path = Path(template.replace("{seed}", str(seed)))
            if not path.is_file():
                raise FileNotFoundError(f"--model {name}={template}: {path} does not exist")
            models[name] = path
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
        "rows": [{"name": n, "config": c} for n, c in rows],
        "exported": [{"name": n, "path": p} for n, p in exported or []],
        "overrides": overrides,
        "summary": summary,
        "per_seed": per_seed,
        "compute": compute,
        "environment": per_seed[0]["environment"],
    }
    (out / "results_table.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "results_table.md").write_text(markdown(result))
    plot_val_map(compute, out / "val_map_over_epochs.png")
    return result


def plot_val_map(compute: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Validation mAP over epochs of each trained row: mean over seeds, band = min..max."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    curves: dict[str, list[list[float]]] = {}
    for seed_runs in compute.values():
        for name, history in seed_runs.items():
            values = [e["val_map"] for e in history["history"] if e.get("val_map") is not None]
            curves.setdefault(name, []).append(values)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        n = min(len(r) for r in runs)
        arr = np.array([r[:n] for r in runs])
        epochs = np.arange(n) - 1  # the first point is before training (epoch -1)
        ax.plot(epochs, arr.mean(axis=0), marker="o", label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(epochs, arr.min(axis=0), arr.max(axis=0), alpha=0.2)
    ax.set_xlabel("epoch (-1 = before training)")
    ax.set_ylabel("validation mAP")
    ax.set_title("Validation mAP (mean over seeds; band: min-max)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _row_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``CONFIG[,key=value...]``: a row's config and its own overrides."""
    config, *pairs = spec.split(",")
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--row override wants key=value, got {pair!r} in {spec!r}")
        overrides[key] = parse_value(raw)
    return config, overrides


def _with_seed(value: Any, seed: int) -> Any:
    """``{seed}`` in a string override is the run's seed (e.g. a per-seed MSN checkpoint)."""
    return value.replace("{seed}", str(seed)) if isinstance(value, str) else value


def _pair(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"{option} wants NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Untrained / self-supervised / supervised table on one dataset."
    )
    parser.add_argument("--data", type=Path, default=Path("var/data/synth"))
    parser.add_argument("--out", type=Path, default=Path("var/bench/table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--row",
        dest="rows",
        action="append",
        default=[],
        help="NAME=CONFIG[,key=value...]: a trained row with its own overrides ({seed} in a "
        "value is replaced by the seed; repeatable; default: self_supervised=demo and "
        "supervised_upper_bound=supervised); the first one also configures the untrained row",
    )
    parser.add_argument(
        "--model",
        dest="exported",
        action="append",
        default=[],
        help="NAME=PATH.onnx: an already exported encoder row ({seed} is replaced by the seed)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="key=value for every run ({seed} in a value is replaced by the seed)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse finished runs found under --out"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for pair in args.overrides:
        key, _, raw = pair.partition("=")
        overrides[key] = parse_value(raw)
    rows = [_pair(r, "--row") for r in args.rows] or list(DEFAULT_ROWS)
    exported = [_pair(m, "--model") for m in args.exported]
    result = run(args.data, args.out, args.seeds, rows, overrides, args.reuse, exported)
    print(markdown(result))
    print(format_table(result["per_seed"][0]))


if __name__ == "__main__":
    main()
