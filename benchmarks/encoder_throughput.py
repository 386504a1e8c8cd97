"""Encoder throughput: torch eager vs ONNX Runtime on the same inputs, side by side.

Builds a randomly initialised HMVE, writes a checkpoint, exports it with
:func:`model.export.export_onnx` (parity-checked), then times ``embed`` on one
fixed input batch with both runtimes, interleaving the repeats after a warm-up,
and reports the median frames per second of each and their ratio.

    python -m polypindex.benchmarks.encoder_throughput --backbone resnet18 --im-size 64 \\
        --seq 8 --batch 4 --repeats 10 --out results/encoder_throughput.json
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polypindex.benchmarks.env import environment, write_result
from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.encoder import HMVE, EncoderConfig, save_encoder_checkpoint
from polypindex.model.export import export_onnx
from polypindex.model.runtime import OnnxEncoder


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def run(
    backbone: str,
    im_size: int,
    seq: int,
    batch: int,
    repeats: int,
    warmup: int,
    threads: int,
    device: str,
    d_model: int = 256,
) -> dict[str, Any]:
    """Build, export and time one encoder; returns the results dict."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    config = EncoderConfig(backbone=backbone, d_model=d_model)
    encoder = HMVE(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "encoder.pt"
        save_encoder_checkpoint(
            checkpoint, encoder, config, PreprocessConfig(im_size=im_size), FragmentConfig()
        )
        report = export_onnx(checkpoint, Path(tmp) / "encoder.onnx", reid_threshold=0.5)
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        onnx_encoder = OnnxEncoder(report.path, providers=providers, intra_op_threads=threads)

        x = (
            np.random.default_rng(0)
            .standard_normal((batch, seq, 3, im_size, im_size))
            .astype(np.float32)
        )
        model = encoder.to(device)
        x_torch = torch.from_numpy(x).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def torch_call() -> np.ndarray:
            with torch.inference_mode():
                return model.embed(x_torch).cpu().numpy()

        def onnx_call() -> np.ndarray:
            return onnx_encoder.embed(x)

        raw = torch_call()
        same_output = float(
            np.max(np.abs(onnx_call() - raw / np.linalg.norm(raw, axis=1, keepdims=True)))
        )
        for _ in range(warmup):
            torch_call()
            onnx_call()
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for i in range(repeats):  # interleaved, alternating which goes first
            order = [("torch", torch_call), ("onnxruntime", onnx_call)]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                times[name].append(_timed(fn, sync))
    frames = batch * seq
    result: dict[str, Any] = {}
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {
            "median_seconds": median,
            "frames_per_second": frames / median,
            "min_seconds": min(values),
            "max_seconds": max(values),
        }
    return {
        "benchmark": "encoder_throughput",
        "settings": {
            "backbone": backbone,
            "im_size": im_size,
            "seq": seq,
            "batch": batch,
            "frames_per_call": frames,
            "repeats": repeats,
            "warmup": warmup,
            "threads": threads,
            "device": device,
            "encoder_config": config.to_dict(),
        },
        "encoder_version": report.encoder_version,
        "export": {
            "seconds": report.seconds,
            "opset": report.opset,
            "parity_max_abs_diff": report.max_abs_diff,
        },
        "max_abs_diff_normalised_embeddings": same_output,
        "onnx_providers": onnx_encoder.providers,
        "results": result,
        "onnxruntime_over_torch": result["onnxruntime"]["frames_per_second"]
        / result["torch"]["frames_per_second"],
        "environment": environment(device=device),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet18", choices=["tiny", "resnet18", "resnet50"])
    parser.add_argument("--im-size", type=int, default=64)
    parser.add_argument("--seq", type=int, default=8, help="frames per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per call")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for both"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("results/encoder_throughput.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = run(
        args.backbone,
        args.im_size,
        args.seq,
        args.batch,
        args.repeats,
        args.warmup,
        args.threads,
        args.device,
    )
    write_result(args.out, results)
    return results


if __name__ == "__main__":
    main()
