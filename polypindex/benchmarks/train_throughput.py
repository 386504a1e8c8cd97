"""Training throughput: one optimisation step of a preset in several precisions (fp32 vs
bf16 mixed precision by default), interleaved side by side in one run, with the time of
each part of the step.

Builds the preset's :class:`training.datamodule.FragmentDataModule` (crops from the
crop cache, held in memory as uint8) and, per precision, its own
:class:`training.module.HmveModule` (same seed, same initial weights) and AdamW. Each
round loads one batch through the real data pipeline (bag sampler → fragment gather →
``model.data.preprocess.normalize`` → collate; timed as ``data``), then steps every
precision's module on that batch exactly as training does: under the autocast context
of Lightning's precision plugin (:func:`training.precision.autocast`), with the
channels-last weights of :func:`training.precision.resolve_channels_last`. The step is
timed in parts — ``forward_backbone`` (the frame encoder), ``forward_rest`` (adapter,
transformer, projector and loss), ``backward``, ``optimizer`` — in wall seconds and in
process CPU seconds (all threads; on a shared machine CPU seconds / threads is closer to
what a quiet machine takes than the wall time is).

Per precision: median seconds per step (compute, and with the data time added),
fragments/s and frames/s, the dtype the frame encoder actually computed in and the
weights' memory format (so a precision that did not take effect shows), the medians of
each part, and the ratio to the first precision. The CPU's bf16 support
(:func:`training.precision.cpu_bf16_support`) is recorded: without native bf16 units
``bf16-mixed`` is emulated and slow.

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
from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import parse_overrides
from polypindex.training.datamodule import FragmentDataModule
from polypindex.training.module import HmveModule
from polypindex.training.precision import (
    autocast,
    cpu_bf16_support,
    resolve_channels_last,
    resolve_precision,
    to_channels_last,
)
from polypindex.training.train import make_datamodule, make_module
from polypindex.training.train_config import TrainConfig, load_train_config

PARTS = ("forward_backbone", "forward_rest", "backward", "optimizer")
DEFAULT_PRECISIONS = ("32-true", "bf16-mixed")


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


class _Clock:
    """Wall and process-CPU marks."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), time.process_time())

    def span(self, start: str, end: str) -> tuple[float, float]:
        (w0, c0), (w1, c1) = self.marks[start], self.marks[end]
        return w1 - w0, c1 - c0


class _Runner:
    """One precision's module, optimiser and step."""

    def __init__(self, config: TrainConfig, precision: str, channels_last: bool) -> None:
        torch.manual_seed(config.seed)
        self.precision = precision
        self.channels_last = channels_last
        self.module: HmveModule = make_module(config)
        self.module.train()
        if channels_last:
            to_channels_last(self.module)
        self.optimiser = torch.optim.AdamW(
            self.module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.clock = _Clock()
        self.compute_dtype = "unknown"
        backbone = self.module.encoder.frame_encoder
        backbone.register_forward_pre_hook(lambda *_: self.clock.mark("backbone_start"))
        backbone.register_forward_hook(self._after_backbone)

    def _after_backbone(self, _module: Any, _inputs: Any, output: torch.Tensor) -> None:
        self.clock.mark("backbone_end")
        self.compute_dtype = str(output.dtype).removeprefix("torch.")

    @property
    def weights_memory_format(self) -> str:
        conv = next(p for p in self.module.encoder.frame_encoder.parameters() if p.dim() == 4)
        channels_last = conv.is_contiguous(memory_format=torch.channels_last)
        return "channels_last" if channels_last else "contiguous"

    def step(self, batch: Any) -> dict[str, tuple[float, float]]:
        frames, labels, ids = batch
        clock = self.clock
        clock.mark("start")
        with autocast(self.precision):
            loss, _ = self.module.compute_loss(frames, labels, ids)
        clock.mark("forward_end")
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward_end")
        self.optimiser.step()
        clock.mark("end")
        return {
            "step": clock.span("start", "end"),
            "forward_backbone": clock.span("backbone_start", "backbone_end"),
            "forward_rest": _minus(
                clock.span("start", "forward_end"), clock.span("backbone_start", "backbone_end")
            ),
            "backward": clock.span("forward_end", "backward_end"),
            "optimizer": clock.span("backward_end", "end"),
        }


def _minus(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


def _median(values: list[tuple[float, float]], which: int) -> float:
    return statistics.median(v[which] for v in values)


def run(
    config: TrainConfig,
    steps: int,
    warmup: int,
    threads: int | None = None,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
) -> dict[str, Any]:
    """Time ``steps`` rounds (one batch, one step per precision) after ``warmup`` rounds."""
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    dm = make_datamodule(config)
    setup_seconds = time.perf_counter() - start
    resolved = [resolve_precision(p, config.accelerator) for p in precisions]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"precisions {list(precisions)} resolve to duplicates: {resolved}")
    runners = [_Runner(config, p, resolve_channels_last(config.channels_last, p)) for p in resolved]
    for runner in runners:
        runner.module.set_fragment_times(train=dm.train_fragments.index)
    batches = _Batches(dm)
    data: list[tuple[float, float]] = []
    timings: list[dict[str, list[tuple[float, float]]]] = [{} for _ in runners]
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = batches.next()
        loaded = (time.perf_counter() - t0, time.process_time() - c0)
        # alternate which precision goes first, so neither always follows the data load
        order = list(range(len(runners)))[:: 1 if i % 2 == 0 else -1]
        for r in order:
            parts = runners[r].step(batch)
            if i >= warmup:
                for name, value in parts.items():
                    timings[r].setdefault(name, []).append(value)
        if i >= warmup:
            data.append(loaded)
    fragments = config.batch_size
    frames = fragments * config.fragment.fragment_length
    data_wall, data_cpu = _median(data, 0), _median(data, 1)
    results: dict[str, Any] = {}
    for requested, runner, times in zip(precisions, runners, timings, strict=True):
        wall, cpu = _median(times["step"], 0), _median(times["step"], 1)
        results[runner.precision] = {
            "requested_precision": requested,
            "channels_last": runner.channels_last,
            "weights_memory_format": runner.weights_memory_format,
            "backbone_compute_dtype": runner.compute_dtype,
            "median_seconds_per_step": wall,
            "median_cpu_seconds_per_step": cpu,
            "median_seconds_per_step_with_data": wall + data_wall,
            "fragments_per_second": fragments / wall,
            "fragments_per_second_with_data": fragments / (wall + data_wall),
            "frames_per_second": frames / wall,
            "fragments_per_cpu_second": fragments / cpu,
            "parts_median_seconds": {p: _median(times[p], 0) for p in PARTS},
            "parts_median_cpu_seconds": {p: _median(times[p], 1) for p in PARTS},
            "seconds": [w for w, _ in times["step"]],
            "cpu_seconds": [c for _, c in times["step"]],
        }
    base = results[runners[0].precision]
    for entry in results.values():
        entry["speedup_over_first"] = (
            base["median_seconds_per_step"] / entry["median_seconds_per_step"]
        )
        entry["cpu_speedup_over_first"] = (
            base["median_cpu_seconds_per_step"] / entry["median_cpu_seconds_per_step"]
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
            "frames_per_step": frames,
            "loss": config.loss,
            "sampler": config.sampler,
            "num_workers": config.num_workers,
            "steps": steps,
            "warmup": warmup,
            "precisions": list(precisions),
            "torch_threads": torch.get_num_threads(),
            "train_fragments": len(dm.train_fragments),
            "setup_seconds": setup_seconds,
        },
        "cpu_bf16": cpu_bf16_support().to_dict(),
        "data": {"median_seconds": data_wall, "median_cpu_seconds": data_cpu},
        "results": results,
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="training preset or YAML path")
    parser.add_argument("--data", help="dataset folder (overrides data_root)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (JSON)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--precision",
        dest="precisions",
        action="append",
        default=None,
        help=f"a precision to time (repeatable; default {' and '.join(DEFAULT_PRECISIONS)}; "
        f"'auto' = what training picks here)",
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench/train_throughput.json"))
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.data:
        overrides["data_root"] = args.data
    config = load_train_config(args.config, overrides)
    result = run(
        config, args.steps, args.warmup, args.threads, args.precisions or DEFAULT_PRECISIONS
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    keys = (
        "backbone_compute_dtype",
        "weights_memory_format",
        "median_seconds_per_step",
        "median_cpu_seconds_per_step",
        "fragments_per_second",
        "speedup_over_first",
    )
    summary = {
        name: {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items() if k in keys}
        for name, entry in result["results"].items()
    }
    print(json.dumps({"cpu_bf16": result["cpu_bf16"]["reason"], **summary}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
