"""The demo model on the project's test split and on a shifted synthetic set.

The generalisation check of docs/results.md: the demo encoder (``polypindex demo``'s
``<home>/models/demo/encoder.onnx``) against the same architecture untrained (the seeded
random initialisation training starts from, before any MSN or HMVE step) and the
colour-histogram and chance rows, on

- the test split of the default synthetic set (``<home>/data/synth``, made by
  ``polypindex demo`` or ``polypindex synth --out var/data/synth``), and
- the test split of the ``shifted`` generator preset (``<home>/data/synth_shifted``, made
  by ``polypindex synth --preset shifted --out var/data/synth_shifted``): another seed,
  palette, polyp count, interleave and camera speed (``polypindex.synth.SYNTH_PRESETS``).

Writes ``--out`` (JSON with the environment): every row of both protocols per set, and
the margins of the trained encoder over the untrained one and the colour histogram.

    polypindex synth --preset shifted --out var/data/synth_shifted
    python -m polypindex.benchmarks.demo_generalisation --home var \\
        --out benchmarks/results/demo_generalisation.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.protocols import evaluate, format_table
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.training.train_config import load_train_config

SETS = ("default", "shifted")


def ensure_set(root: Path, preset: str) -> Path:
    """``root``, or an error naming the command that makes the ``preset`` set there."""
    if not (root / "annotations" / "instances_test.json").is_file():
        raise InvalidInputError(
            f"no synthetic set at {root}: make it with "
            f"`polypindex synth --preset {preset} --out {root}`"
        )
    return root


def untrained_onnx(lay: Layout, data: Path, out: Path, config: str) -> Path:
    """The ``config`` preset's encoder as training would start it, exported to ONNX."""
    from polypindex.benchmarks.results_table import untrained_checkpoint
    from polypindex.model.nets.export import export_onnx

    onnx_path = out / "encoder.onnx"
    if not onnx_path.is_file():
        cfg = load_train_config(
            config, {"data_root": str(data), "cache_dir": str(lay.crop_cache), "out_dir": str(out)}
        )
        export_onnx(untrained_checkpoint(cfg, out), onnx_path)
    return onnx_path


def _map(result: dict[str, Any], name: str) -> float:
    row = next(r for r in result["rows"] if r["name"] == name)
    return float(row["retrieval"]["map"])


def run(lay: Layout, model: Path, work: Path, config: str = "demo_model") -> dict[str, Any]:
    """Evaluate ``model`` and the references on both sets (files under ``work``)."""
    roots = {
        "default": ensure_set(lay.demo_data, "default"),
        "shifted": ensure_set(lay.data_dir / "synth_shifted", "shifted"),
    }
    untrained = untrained_onnx(lay, roots["default"], work / "untrained", config)
    sets: dict[str, Any] = {}
    for name, root in roots.items():
        result = evaluate(
            root,
            "test",
            {"trained": model, "untrained": untrained},
            work / name,
            cache_dir=lay.crop_cache / f"bench_{name}",
            progress=False,
        )
        print(f"## {name} set ({root}, test split)\n{format_table(result)}\n", flush=True)
        trained = _map(result, "trained")
        result["margins"] = {
            "map_over_untrained": trained - _map(result, "untrained"),
            "map_over_color_histogram": trained - _map(result, "color_histogram"),
        }
        result.pop("environment", None)
        sets[name] = result
    return {
        "benchmark": "demo_generalisation",
        "model": str(model),
        "untrained_config": config,
        "sets": sets,
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="artefact folder (default var)")
    parser.add_argument(
        "--model", type=Path, default=None, help="default <home>/models/demo/encoder.onnx"
    )
    parser.add_argument("--config", default="demo_model", help="preset of the untrained row")
    parser.add_argument(
        "--work", type=Path, default=None, help="default <home>/bench/demo_generalisation"
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench/demo_generalisation.json"))
    args = parser.parse_args(argv)
    lay = Layout(home=args.home) if args.home else Layout()
    model = args.model or lay.demo_model_dir / "encoder.onnx"
    work = args.work or lay.home / "bench" / "demo_generalisation"
    write_result(args.out, run(lay, model, work, args.config), echo=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
