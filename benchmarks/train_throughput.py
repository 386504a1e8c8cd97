"""Training throughput: one optimisation step with the real data pipeline vs the same
batches already in memory as tensors, interleaved side by side in one run.

Builds the preset's :class:`training.datamodule.FragmentDataModule` (crops from the
crop cache, held in memory as uint8), its :class:`training.module.HmveModule` and
AdamW, then alternates two kinds of step:

- ``pipeline``: the next batch from the training DataLoader (bag sampler → fragment
  gather → ``model.preprocess.normalize`` → collate) + forward, loss, backward, step;
- ``in_memory``: a batch taken from the loader before timing, already a tensor, +
  forward, loss, backward, step.

The difference is what the data path costs per step. Reports median seconds per step,
fragments/s and frames/s for each, and the pipeline's data-loading seconds.

    python -m polypindex.benchmarks.train_throughput --config demo --data var/data/synth \\
        --steps 3 --warmup 1 --out var/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from polypindex.benchmarks.env import environment
from polypindex.training.datamodule import FragmentDataModule
from polypindex.training.train import TrainConfig, load_train_config, make_datamodule, make_module
from polypindex.training.trainer import add_run_arguments, run_overrides


class _Batches:
    """Endless training batches from the real DataLoader (a new epoch when one ends)."""

    def __init__(self, dm: FragmentDataModule) -> None:
        self.dm = dm
        self.epoch = 0
        self._it = self._new()

    def _new(self) -> Iterator[Any]:
        self.dm.train_sampler.set_epoch(self.epoch)
        return iter(self.dm.train_dataloader())

    def next(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = self._new()
            return next(self._it)


def run(config: TrainConfig, steps: int, warmup: int, threads: int | None = None) -> dict[str, Any]:
    """Time ``steps`` interleaved pairs of steps after ``warmup`` untimed pairs."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    dm = make_datamodule(config)
    setup_seconds = time.perf_counter() - start
    module = make_module(config)
    module.set_fragment_times(train=dm.train_fragments.index)
    module.train()
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    batches = _Batches(dm)
    in_memory = [batches.next() for _ in range(min(steps + warmup, len(dm.train_sampler)))]

    def step(batch: Any) -> float:
        frames, labels, ids = batch
        loss, _ = module.compute_loss(frames, labels, ids)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    timings: dict[str, list[float]] = {"pipeline": [], "in_memory": [], "pipeline_data": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = batches.next()
        t1 = time.perf_counter()
        step(batch)
        t2 = time.perf_counter()
        step(in_memory[i % len(in_memory)])
        t3 = time.perf_counter()
        if i >= warmup:
            timings["pipeline"].append(t2 - t0)
            timings["pipeline_data"].append(t1 - t0)
            timings["in_memory"].append(t3 - t2)
    fragments = config.batch_size
    frames = fragments * config.fragment.fragment_length
    results: dict[str, Any] = {}
    for name in ("pipeline", "in_memory"):
        median = statistics.median(timings[name])
        results[name] = {
            "median_seconds_per_step": median,
            "fragments_per_second": fragments / median,
            "frames_per_second": frames / median,
            "seconds": timings[name],
        }
    results["pipeline"]["median_data_seconds"] = statistics.median(timings["pipeline_data"])
    results["pipeline_over_in_memory"] = (
        results["pipeline"]["median_seconds_per_step"]
        / results["in_memory"]["median_seconds_per_step"]
    )
    return {
        "benchmark": "train_throughput",
        "config": config.name,
        "settings": {
            "backbone": config.encoder.backbone,
            "im_size": config.preprocess.im_size,
            "batch_size": config.batch_size,
            "n_views": config.n_views,
            "fragment_length": config.fragment.fragment_length,
            "loss": config.loss,
            "sampler": config.sampler,
            "num_workers": config.num_workers,
            "steps": steps,
            "warmup": warmup,
            "torch_threads": torch.get_num_threads(),
            "train_fragments": len(dm.train_fragments),
            "setup_seconds": setup_seconds,
        },
        "results": results,
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="training preset or YAML path")
    add_run_arguments(parser, out=False)
    parser.add_argument("--steps", type=int, default=3, help="timed step pairs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed step pairs first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("var/bench/train_throughput.json"))
    args = parser.parse_args(argv)
    config = load_train_config(args.config, run_overrides(parser, args))
    result = run(config, args.steps, args.warmup, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    summary = {
        name: {k: round(v, 3) for k, v in result["results"][name].items() if isinstance(v, float)}
        for name in ("pipeline", "in_memory")
    }
    print(json.dumps(summary | {"ratio": round(result["results"]["pipeline_over_in_memory"], 3)}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
