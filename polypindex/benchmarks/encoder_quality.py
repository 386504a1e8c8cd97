"""Retrieval mAP and re-ID AUROC of one trained encoder at each precision, on one split.

The same ONNX model is run as ONNX Runtime FP32 (the reference), OpenVINO FP32, OpenVINO
BF16 and, when ``--int8`` gives the INT8 export (``polypindex export --quantize int8``),
INT8 on ONNX Runtime and OpenVINO; every tracklet is embedded whole exactly as in
``polypindex bench retrieval`` (:func:`benchmarks.protocols.embed_tracklets_onnx`). Each
row reports mAP, HR@1, AUROC, their differences to FP32, the precision the runtime
really used (``describe()``: BF16 falls back to FP32 on CPUs without BF16 units) and
the min / mean cosine of its embeddings to FP32's.

    python -m polypindex.benchmarks.encoder_quality --data var/data/synth --split test \\
        --model var/models/demo/encoder.onnx --int8 var/models/demo/encoder_int8.onnx \\
        --out results/encoder_quality.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.protocols import embed_tracklets_onnx
from polypindex.model.data.coco import load_coco_split
from polypindex.model.runtime.loader import load_encoder
from polypindex.model.runtime.openvino import openvino_available
from polypindex.model.scoring.evaluation import reid_metrics, retrieval_metrics


def evaluate_precisions(
    data: Path, split: str, model: Path, int8: Path | None, threads: int | None = None
) -> dict[str, Any]:
    tracklets = load_coco_split(data, split).tracklets()
    identities = [str(t.identity_id) for t in tracklets]
    variants: list[tuple[str, Path, str, str]] = [
        ("onnxruntime-fp32", model, "onnxruntime", "fp32")
    ]
    if openvino_available():
        variants += [
            ("openvino-fp32", model, "openvino", "fp32"),
            ("openvino-bf16", model, "openvino", "bf16"),
        ]
    if int8 is not None:
        variants.append(("onnxruntime-int8", int8, "onnxruntime", "fp32"))
        if openvino_available():
            variants.append(("openvino-int8", int8, "openvino", "fp32"))
    rows: dict[str, Any] = {}
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory() as cache:
        for name, path, runtime, precision in variants:
            encoder = load_encoder(path, runtime, precision, threads=threads)
            emb = embed_tracklets_onnx(cast(Any, encoder), tracklets, Path(cache), progress=False)
            retrieval = retrieval_metrics(emb, identities).to_json_dict()
            reid = reid_metrics(emb, identities).to_json_dict()
            row: dict[str, Any] = {
                **encoder.describe(),
                "map": retrieval["map"],
                "hr@1": retrieval["hit_rate"].get("1"),
                "auroc": reid["auroc"],
            }
            if reference is None:
                reference = emb
                base = row
            cos = np.sum(emb * reference, axis=1)
            row.update(
                min_cosine_to_fp32=float(cos.min()),
                mean_cosine_to_fp32=float(cos.mean()),
                map_minus_fp32=row["map"] - base["map"],
                auroc_minus_fp32=row["auroc"] - base["auroc"],
            )
            rows[name] = row
    return {
        "benchmark": "encoder_quality",
        "data": str(data),
        "split": split,
        "tracklets": len(tracklets),
        "model": str(model),
        "int8_model": str(int8) if int8 else None,
        "results": rows,
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, required=True, help="the FP32 encoder.onnx")
    parser.add_argument("--int8", type=Path, default=None, help="its INT8 export")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("results/encoder_quality.json"))
    args = parser.parse_args(argv)
    result = evaluate_precisions(args.data, args.split, args.model, args.int8, args.threads)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
