"""The command-line shape the encoder benchmarks share (:mod:`benchmarks.encoder_throughput`,
:mod:`benchmarks.gpu_bench`): the module docstring as the help, and the model and timing
options, each benchmark with its own defaults."""

from __future__ import annotations

import argparse

BENCH_BACKBONES = ("tiny", "resnet18", "resnet50")


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose help is ``doc`` as written (the benchmark's module docstring)."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    backbone: str,
    im_size: int,
    seq: int,
    warmup: int,
    seq_help: str | None = None,
    batch_help: str | None = None,
) -> None:
    """``--backbone --im-size --seq --batch --repeats --warmup`` (batch 4 and 10 repeats
    unless given on the command line)."""
    parser.add_argument("--backbone", default=backbone, choices=list(BENCH_BACKBONES))
    parser.add_argument("--im-size", type=int, default=im_size)
    parser.add_argument("--seq", type=int, default=seq, help=seq_help)
    parser.add_argument("--batch", type=int, default=4, help=batch_help)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=warmup)
