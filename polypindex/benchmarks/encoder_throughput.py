"""Encoder throughput, every runtime and precision on the same ONNX file, side by side.

Builds a randomly initialised HMVE (speed does not depend on the weights), writes a
checkpoint, exports it with :func:`model.nets.export.export_onnx` (parity-checked), makes
the INT8 copy with :func:`model.nets.quantize.quantize_with_sequences` (calibrated on random
inputs: activation ranges do not change the speed), then times ``embed`` on one fixed
input batch with each variant, interleaving the repeats after a warm-up (the order
rotates each round), and reports the median frames per second of each, its ratio to
ONNX Runtime FP32 and the cosine of its embeddings to ONNX Runtime FP32's.

Variants: ``torch`` (eager), ``onnxruntime-fp32``, ``openvino-fp32``, ``openvino-bf16``,
``onnxruntime-int8``, ``openvino-int8``. An OpenVINO variant is skipped (and said so)
when OpenVINO is not installed; ``openvino-bf16`` on a CPU without BF16 units runs FP32
and its entry says ``"precision": "fp32"`` (see ``describe``).

    python -m polypindex.benchmarks.encoder_throughput --backbone resnet50 --im-size 232 \\
        --seq 16 --batch 1 --repeats 7 --out results/encoder_throughput_paper.json
"""

from __future__ import annotations

import functools
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
from polypindex.benchmarks.model_args import add_model_options, bench_parser
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.nets.export import export_onnx
from polypindex.model.nets.hmve import HMVE, EncoderConfig
from polypindex.model.nets.quantize import quantize_with_sequences
from polypindex.model.runtime.loader import load_encoder
from polypindex.model.runtime.openvino import openvino_available

VARIANTS = (
    "torch",
    "onnxruntime-fp32",
    "openvino-fp32",
    "openvino-bf16",
    "onnxruntime-int8",
    "openvino-int8",
)
DEFAULT_VARIANTS = VARIANTS[1:]
BASELINE = "onnxruntime-fp32"


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _summary(values: list[float], frames: int) -> dict[str, float]:
    median = statistics.median(values)
    return {
        "median_seconds": median,
        "frames_per_second": frames / median,
        "min_seconds": min(values),
        "max_seconds": max(values),
    }


def run(
    backbone: str,
    im_size: int,
    seq: int,
    batch: int,
    repeats: int,
    warmup: int,
    threads: int,
    device: str = "cpu",
    d_model: int = 256,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
) -> dict[str, Any]:
    """Build, export, quantise and time one encoder; returns the results dict."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    config = EncoderConfig(backbone=backbone, d_model=d_model)
    encoder = HMVE(config).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq, 3, im_size, im_size)).astype(np.float32)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "encoder.pt"
        save_encoder_checkpoint(
            checkpoint, encoder, config, PreprocessConfig(im_size=im_size), FragmentConfig()
        )
        report = export_onnx(checkpoint, Path(tmp) / "encoder.onnx", reid_threshold=0.5)
        int8_path = Path(tmp) / "encoder_int8.onnx"
        quant: dict[str, Any] | None = None
        if any(v.endswith("int8") for v in variants):
            calib = [
                rng.standard_normal((seq, 3, im_size, im_size)).astype(np.float32) for _ in range(4)
            ]
            q = quantize_with_sequences(
                report.path, int8_path, calib, {"data": "random normal", "tracklets": 4}
            )
            quant = {"seconds": q.seconds, "encoder_version": q.encoder_version}
        calls: dict[str, Callable[[], np.ndarray]] = {}
        described: dict[str, dict[str, Any]] = {}
        model = encoder.to(device)
        x_torch = torch.from_numpy(x).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for name in variants:
            runtime, precision = name.split("-") if "-" in name else (name, "fp32")
            if runtime == "torch":

                def torch_call() -> np.ndarray:
                    with torch.inference_mode():
                        raw = model.embed(x_torch).cpu().numpy()
                    return raw / np.linalg.norm(raw, axis=1, keepdims=True)

                calls[name] = torch_call
                described[name] = {"runtime": "torch", "provider": device, "precision": "fp32"}
                continue
            if runtime == "openvino" and not openvino_available():
                skipped[name] = "openvino not installed"
                continue
            path = int8_path if precision == "int8" else report.path
            enc = load_encoder(
                path, runtime, "fp32" if precision == "int8" else precision, threads=threads
            )
            calls[name] = functools.partial(enc.embed, x)
            described[name] = enc.describe()
        reference = calls[BASELINE]() if BASELINE in calls else None
        agreement = {}
        for name, fn in calls.items():
            out = fn()
            if reference is not None:
                agreement[name] = {
                    "min_cosine_to_onnxruntime_fp32": float(np.min(np.sum(out * reference, 1))),
                    "max_abs_diff_to_onnxruntime_fp32": float(np.max(np.abs(out - reference))),
                }
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for i in range(repeats):  # interleaved; the order rotates each round
            for name in names[i % len(names) :] + names[: i % len(names)]:
                times[name].append(_timed(calls[name], sync))
    frames = batch * seq
    results = {name: _summary(values, frames) for name, values in times.items()}
    base = results.get(BASELINE, {}).get("frames_per_second")
    for name, entry in results.items():
        entry.update(described[name])
        entry.update(agreement.get(name, {}))
        if base:
            entry["speed_over_onnxruntime_fp32"] = entry["frames_per_second"] / base
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
            "variants": list(variants),
            "encoder_config": config.to_dict(),
        },
        "encoder_version": report.encoder_version,
        "export": {
            "seconds": report.seconds,
            "opset": report.opset,
            "parity_max_abs_diff": report.max_abs_diff,
        },
        "int8": quant,
        "results": results,
        "skipped": skipped,
        "environment": environment(device=device),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = bench_parser(__doc__)
    add_model_options(
        parser,
        backbone="resnet18",
        im_size=64,
        seq=8,
        warmup=2,
        seq_help="frames per sequence",
        batch_help="sequences per call",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for all"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch's device")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=VARIANTS,
        help="what to time (default: every ONNX variant; add torch for eager)",
    )
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
        variants=tuple(args.variants),
    )
    write_result(args.out, results)
    return results


if __name__ == "__main__":
    main()
