"""The paper's central claim at a real budget: does MIL-NCE degrade more slowly than the
plain multi-positive loss as temporal bags get noisier?

For each dataset (a noise level: more polyps per procedure and more interleaving put more
members of another polyp in a bag), per seed, both losses train on the **same** temporal
temperature bags (same seed, same sampler, same budget) through
:func:`benchmarks.results_table.run`, and are evaluated on the test split with the
product's protocol. The wrong-member rate of each dataset is measured with the sweep's
own fragment and bag settings (:func:`benchmarks.bag_noise.measure`), averaged over the
epochs of the run's bag schedule. Writes ``OUT/noise_sweep.json`` and
``OUT/noise_sweep.png`` (mAP vs wrong-member rate for both losses).

    python -m polypindex.benchmarks.noise_sweep --out var/bench/noise_sweep --seeds 0 1 2 \\
        --level low=var/data/sweep_1-3 --level mid=var/data/sweep_3-6 --level high=var/data/sweep_6-9 \\
        --set epochs=4 --set max_steps_per_epoch=40 --set batch_size=20 --set preprocess.im_size=32

(the settings of docs/results.md#the-claim-at-a-real-budget; ``--set`` values go to
every run, as in ``results_table``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.bag_noise import measure
from polypindex.benchmarks.env import environment
from polypindex.benchmarks.results_table import _row_spec, _train_or_reuse
from polypindex.benchmarks.results_table import run as run_table
from polypindex.model.data.config import parse_value
from polypindex.training.plots import save_noise_sweep_png
from polypindex.training.train_config import load_train_config

LOSS_ROWS = (("mil_nce", "demo"), ("plain_multi_positive", "demo,loss=multi_positive"))


def _per_seed_map(table: dict[str, Any], row: str) -> list[float]:
    return [
        float(r["retrieval"]["map"])
        for res in table["per_seed"]
        for r in res["rows"]
        if r["name"] == row
    ]


def train_only(
    levels: list[tuple[str, Path]],
    out: Path,
    seeds: list[int],
    overrides: dict[str, Any],
    loss_row: str,
    config: str = "demo",
) -> None:
    """Train one loss's runs (``--train-only``), exactly as :func:`sweep` would (same
    configs, same folders), so that several processes can share the training and one
    final :func:`sweep` with ``reuse`` evaluates them all."""
    specs = {name: spec.replace("demo", config, 1) for name, spec in LOSS_ROWS}
    if loss_row not in specs:
        raise SystemExit(f"--train-only wants one of {sorted(specs)}, got {loss_row!r}")
    config_name, row_overrides = _row_spec(specs[loss_row])
    for name, data in levels:
        for seed in seeds:  # as results_table.run builds them
            settings = load_train_config(
                config_name,
                {
                    "data_root": str(data),
                    "cache_dir": str(out / name / "crop_cache"),
                    "seed": seed,
                    **overrides,
                    **row_overrides,
                    "out_dir": str(out / name / f"seed{seed}" / loss_row),
                },
            )
            _train_or_reuse(settings, reuse=True)


def sweep(
    levels: list[tuple[str, Path]],
    out: Path,
    seeds: list[int],
    overrides: dict[str, Any],
    config: str = "demo",
    reuse: bool = True,
) -> dict[str, Any]:
    """Train and evaluate both losses per level and seed; return (and write) the summary."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [(name, spec.replace("demo", config, 1)) for name, spec in LOSS_ROWS]
    settings = load_train_config(config, {k: v for k, v in overrides.items() if "{" not in str(v)})
    results: list[dict[str, Any]] = []
    for name, data in levels:
        t0 = time.perf_counter()
        noise = [
            measure(
                data,
                epochs=settings.epochs,
                seed=seed,
                fragment=settings.fragment,
                n_views=settings.n_views,
                batch_size=settings.batch_size,
                t_min=settings.t_min,
                t_max=settings.t_max,
                tracklet=settings.tracklet,
            )
            for seed in seeds
        ]
        table = run_table(data, out / name, seeds, rows, overrides, reuse=reuse)
        level: dict[str, Any] = {
            "name": name,
            "data": str(data),
            "wrong_member_rate": float(
                np.mean([float(n["mean_wrong_member_rate"]) for n in noise])  # type: ignore[arg-type]
            ),
            "bag_noise": noise,
            "chance": _per_seed_map(table, "chance")[0],
            "color_histogram": _per_seed_map(table, "color_histogram")[0],
            "untrained": _summary(_per_seed_map(table, "untrained")),
            "losses": {},
            "seconds": time.perf_counter() - t0,
        }
        for loss, _ in rows:
            level["losses"][loss] = _summary(_per_seed_map(table, loss))
            level["losses"][loss]["train_wall_seconds"] = [
                table["compute"][f"seed{s}"][loss]["wall_seconds"] for s in seeds
            ]
            level["losses"][loss]["best_epoch"] = [
                table["compute"][f"seed{s}"][loss].get("best_epoch") for s in seeds
            ]
        gaps = np.subtract(
            level["losses"]["mil_nce"]["per_seed"],
            level["losses"]["plain_multi_positive"]["per_seed"],
        )
        level["mil_nce_minus_plain"] = _summary([float(g) for g in gaps])
        results.append(level)
    steps = settings.epochs * (settings.max_steps_per_epoch or 0)
    summary = {
        "seeds": seeds,
        "config": config,
        "overrides": overrides,
        "budget": {
            "epochs": settings.epochs,
            "max_steps_per_epoch": settings.max_steps_per_epoch,
            "optimisation_steps_per_run": steps or None,
            "batch_size": settings.batch_size,
            "n_views": settings.n_views,
            "fragment_length": settings.fragment.fragment_length,
            "stride": settings.fragment.stride,
            "im_size": settings.preprocess.im_size,
            "backbone": settings.encoder.backbone,
            "frames_per_step": settings.batch_size * settings.fragment.fragment_length,
        },
        "levels": results,
        "environment": environment(),
    }
    (out / "noise_sweep.json").write_text(json.dumps(summary, indent=2, default=float))
    save_noise_sweep_png(
        [
            (
                lv["wrong_member_rate"],
                {k: v["per_seed"] for k, v in lv["losses"].items()},
                lv["color_histogram"],
            )
            for lv in results
        ],
        out / "noise_sweep.png",
        title=f"{steps or '?'} steps x {settings.batch_size} fragments, {len(seeds)} seeds",
    )
    return summary


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "per_seed": [float(v) for v in arr]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--level",
        action="append",
        required=True,
        help="NAME=DATA_DIR: one noise level (a dataset with train/val/test splits); repeatable",
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench/noise_sweep"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="demo", help="the preset both losses start from")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-reuse", action="store_true", help="retrain finished runs")
    parser.add_argument(
        "--train-only",
        metavar="LOSS",
        help="only train this loss's runs (mil_nce | plain_multi_positive), no evaluation: "
        "run one process per loss side by side, then once without it to evaluate",
    )
    args = parser.parse_args(argv)
    levels = []
    for item in args.level:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--level wants NAME=DIR, got {item!r}")
        levels.append((name, Path(path)))
    overrides: dict[str, Any] = {}
    for pair in args.overrides:
        key, _, raw = pair.partition("=")
        overrides[key] = parse_value(raw)
    if args.train_only:
        train_only(levels, args.out, args.seeds, overrides, args.train_only, args.config)
        return
    result = sweep(levels, args.out, args.seeds, overrides, args.config, not args.no_reuse)
    for lv in result["levels"]:
        m, p = lv["losses"]["mil_nce"], lv["losses"]["plain_multi_positive"]
        print(
            f"{lv['name']}: wrong members {lv['wrong_member_rate']:.1%}  MIL-NCE {m['mean']:.3f} ± "
            f"{m['std']:.3f}  plain {p['mean']:.3f} ± {p['std']:.3f}  "
            f"gap {lv['mil_nce_minus_plain']['mean']:+.3f}"
        )


if __name__ == "__main__":
    main()
