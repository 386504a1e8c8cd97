"""GPU benchmarks that fall back to the CPU (and say so): encoder, vector search, training step.

    python -m polypindex.benchmarks.gpu_bench encoder --out results/gpu_encoder.json
    python -m polypindex.benchmarks.gpu_bench search --vectors 1000000 --out results/gpu_search.json
    python -m polypindex.benchmarks.gpu_bench train --out results/gpu_train_step.json
    python -m polypindex.benchmarks.gpu_bench all --out-dir results/   # the three, one run each

* ``encoder``: frames/s of one random-init HMVE at the paper size (resnet50, 232 px,
  16 frames per call) for ONNX Runtime CUDA FP32, ONNX Runtime CUDA FP16 (the graph
  converted to FP16, FP32 inputs/outputs), TensorRT FP16 (engines cached in a temporary
  folder; the first call builds them and is not timed), torch CUDA eager FP32 and FP16
  autocast; each with its cosine to ONNX Runtime CUDA FP32. A variant this install or
  machine cannot run is listed under ``skipped`` with the reason.
* ``search``: exact inner-product top-k over ``--vectors`` random unit vectors, faiss on
  the GPU (``faiss-gpu``) next to faiss on the CPU, same queries; recall of GPU vs CPU.
* ``train``: steps/s of a HMVE training step (forward, symmetric InfoNCE on two views,
  backward, AdamW) in FP32 and in ``16-mixed`` (CUDA autocast FP16 + gradient scaling).

Without a GPU each runs its CPU variants (ONNX Runtime CPU, torch CPU, faiss CPU, bf16
autocast for the training step) and its JSON says ``"gpu": false`` and why, so the same
script can run anywhere and the lead can run it unchanged on a GPU machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.model_args import add_model_options, bench_parser


def gpu_status() -> dict[str, Any]:
    """Whether torch sees a CUDA GPU, and ONNX Runtime's / faiss's GPU support."""
    import onnxruntime as ort
    import torch

    status: dict[str, Any] = {
        "gpu": bool(torch.cuda.is_available()),
        "onnxruntime_providers": ort.get_available_providers(),
    }
    if status["gpu"]:
        status["gpu_name"] = torch.cuda.get_device_name(0)
    else:
        status["note"] = "no CUDA GPU visible to torch: the CPU variants ran instead"
    try:
        import faiss

        status["faiss_gpus"] = int(getattr(faiss, "get_num_gpus", lambda: 0)())
    except ImportError:
        status["faiss_gpus"] = None
    return status


def _median_rate(
    fn: Callable[[], object], units: int, repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"median_seconds": median, "per_second": units / median, "min_seconds": min(times)}


def _export(tmp: Path, backbone: str, im_size: int) -> tuple[Any, Path]:
    import torch

    from polypindex.model.data.config import FragmentConfig, PreprocessConfig
    from polypindex.model.nets.encoder import save_encoder_checkpoint
    from polypindex.model.nets.export import export_onnx
    from polypindex.model.nets.hmve import HMVE, EncoderConfig

    torch.manual_seed(0)
    config = EncoderConfig(backbone=backbone)
    model = HMVE(config).eval()
    save_encoder_checkpoint(
        tmp / "e.pt", model, config, PreprocessConfig(im_size=im_size), FragmentConfig()
    )
    return model, export_onnx(tmp / "e.pt", tmp / "e.onnx", reid_threshold=0.5).path


def bench_encoder(
    backbone: str, im_size: int, seq: int, repeats: int, warmup: int
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from polypindex.model.runtime.loader import load_encoder
    from polypindex.model.runtime.onnx import CPU, CUDA, TENSORRT

    status = gpu_status()
    available = ort.get_available_providers()
    x = np.random.default_rng(0).standard_normal((1, seq, 3, im_size, im_size)).astype(np.float32)
    calls: dict[str, Callable[[], np.ndarray]] = {}
    skipped: dict[str, str] = {}
    device = "cuda" if status["gpu"] else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model, onnx_path = _export(tmp, backbone, im_size)
        if CUDA in available and status["gpu"]:
            cuda = load_encoder(onnx_path, providers=[CUDA, CPU])
            calls["onnxruntime-cuda-fp32"] = lambda: cuda.embed(x)
            try:
                import onnx
                from onnxruntime.transformers.float16 import convert_float_to_float16

                half = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
                onnx.save_model(half, str(tmp / "e16.onnx"))
                # an FP16 copy of the weights: timed as it is (no FP32 fallback), parity recorded
                cuda16 = load_encoder(tmp / "e16.onnx", providers=[CUDA, CPU], min_cosine=0.0)
                calls["onnxruntime-cuda-fp16"] = lambda: cuda16.embed(x)
            except Exception as exc:  # conversion tools differ between ORT versions
                skipped["onnxruntime-cuda-fp16"] = f"{type(exc).__name__}: {exc}"
        else:
            skipped["onnxruntime-cuda-fp32"] = skipped["onnxruntime-cuda-fp16"] = (
                f"no CUDA provider usable (providers {available}, gpu {status['gpu']})"
            )
            cpu = load_encoder(onnx_path, providers=[CPU])
            calls["onnxruntime-cpu-fp32"] = lambda: cpu.embed(x)
        if TENSORRT in available and status["gpu"]:
            try:
                trt = load_encoder(onnx_path, "onnxruntime", "fp16", engine_cache=tmp / "trt")
                trt.embed(x)  # builds the engine (minutes), not timed
                calls["tensorrt-fp16"] = lambda: trt.embed(x)
            except Exception as exc:
                skipped["tensorrt-fp16"] = f"{type(exc).__name__}: {exc}"
        else:
            skipped["tensorrt-fp16"] = "no TensorRT provider in this onnxruntime build or no GPU"
        model = model.to(device)
        xt = torch.from_numpy(x).to(device)

        def torch_call(half: bool) -> np.ndarray:
            with (
                torch.inference_mode(),
                torch.autocast(
                    device,
                    enabled=half,
                    dtype=torch.float16 if device == "cuda" else torch.bfloat16,
                ),
            ):
                raw = model.embed(xt).float().cpu().numpy()
            return raw / np.linalg.norm(raw, axis=1, keepdims=True)

        calls[f"torch-{device}-fp32"] = lambda: torch_call(False)
        calls[f"torch-{device}-{'fp16' if device == 'cuda' else 'bf16'}-autocast"] = lambda: (
            torch_call(True)
        )
        reference_name = next(iter(calls))
        reference = calls[reference_name]()
        results: dict[str, Any] = {}
        for name, fn in calls.items():
            cos = float(np.min(np.sum(fn() * reference, axis=1)))
            for _ in range(warmup):
                fn()
            rate = _median_rate(fn, seq, repeats, sync)
            results[name] = {
                "frames_per_second": rate.pop("per_second"),
                **rate,
                "min_cosine_to_" + reference_name: cos,
            }
    return {
        "benchmark": "gpu_encoder",
        "settings": {
            "backbone": backbone,
            "im_size": im_size,
            "frames_per_call": seq,
            "repeats": repeats,
        },
        **status,
        "results": results,
        "skipped": skipped,
        "environment": environment(device=device),
    }


def bench_search(vectors: int, dim: int, queries: int, k: int, repeats: int) -> dict[str, Any]:
    import faiss

    status = gpu_status()
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((vectors, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(vectors, queries, replace=False)] + 0.05 * rng.standard_normal(
        (queries, dim), dtype=np.float32
    )
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(xb)
    results: dict[str, Any] = {}
    _, cpu_ids = cpu.search(xq, k)
    results["faiss-cpu-flat"] = _median_rate(
        lambda: cpu.search(xq, k), queries, repeats, lambda: None
    )
    skipped = {}
    if status.get("faiss_gpus"):
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        _, gpu_ids = gpu.search(xq, k)
        results["faiss-gpu-flat"] = _median_rate(
            lambda: gpu.search(xq, k), queries, repeats, lambda: None
        )
        results["faiss-gpu-flat"]["recall_vs_cpu"] = float(
            np.mean([len(set(a) & set(b)) / k for a, b in zip(gpu_ids, cpu_ids, strict=True)])
        )
    else:
        skipped["faiss-gpu-flat"] = "faiss has no GPU here (faiss-cpu, or no GPU visible)"
    for entry in results.values():
        entry["queries_per_second"] = entry.pop("per_second")
    return {
        "benchmark": "gpu_search",
        "settings": {
            "vectors": vectors,
            "dim": dim,
            "queries": queries,
            "k": k,
            "repeats": repeats,
        },
        **status,
        "results": results,
        "skipped": skipped,
        "environment": environment(),
    }


def _train_rate(
    backbone: str, mode: str, device: str, x1: Any, x2: Any, steps: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Steps/s of one HMVE training step in ``mode`` ("32", "16-mixed", "bf16-mixed")."""
    import torch
    import torch.nn.functional as F

    from polypindex.model.nets.hmve import HMVE, EncoderConfig

    model = HMVE(EncoderConfig(backbone=backbone)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=mode == "16-mixed")
    dtype = torch.float16 if mode == "16-mixed" else torch.bfloat16

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=mode != "32"):
            a = F.normalize(model.embed(x1).float(), dim=1)
            b = F.normalize(model.embed(x2).float(), dim=1)
            logits = a @ b.T / 0.1
            target = torch.arange(len(a), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up
    rate = _median_rate(step, 1, steps, sync)
    frames = 2 * int(x1.shape[0]) * int(x1.shape[1])
    return {
        "steps_per_second": rate.pop("per_second"),
        **rate,
        "frames_per_second": frames / rate["median_seconds"],
    }


def bench_train(backbone: str, im_size: int, batch: int, seq: int, steps: int) -> dict[str, Any]:
    import torch

    status = gpu_status()
    device = "cuda" if status["gpu"] else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x1 = torch.randn(batch, seq, 3, im_size, im_size, device=device)
    x2 = torch.randn(batch, seq, 3, im_size, im_size, device=device)
    results: dict[str, Any] = {}
    modes = ["32", "16-mixed"] if device == "cuda" else ["32", "bf16-mixed"]
    for mode in modes:
        results[mode] = _train_rate(backbone, mode, device, x1, x2, steps, sync)
    return {
        "benchmark": "gpu_train_step",
        "settings": {
            "backbone": backbone,
            "im_size": im_size,
            "batch": batch,
            "seq": seq,
            "steps": steps,
        },
        **status,
        "results": results,
        "environment": environment(device=device),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = bench_parser(__doc__)
    parser.add_argument("what", choices=["encoder", "search", "train", "all"])
    add_model_options(
        parser,
        backbone="resnet50",
        im_size=232,
        seq=16,
        warmup=3,
        batch_help="training step: tracklets per view",
    )
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "encoder": lambda: bench_encoder(
            args.backbone, args.im_size, args.seq, args.repeats, args.warmup
        ),
        "search": lambda: bench_search(args.vectors, args.dim, args.queries, 10, args.repeats),
        "train": lambda: bench_train(
            args.backbone, args.im_size, args.batch, args.seq, args.repeats
        ),
    }
    out: dict[str, Any] = {}
    for name in runs if args.what == "all" else [args.what]:
        out[name] = runs[name]()
        path = args.out if args.out and args.what != "all" else args.out_dir / f"gpu_{name}.json"
        write_result(path, out[name])
    return out


if __name__ == "__main__":
    main()
