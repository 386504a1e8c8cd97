"""Indexing throughput next to the bare encoder's, on the same tracklets, in one run.

Each of the three is run ``--rounds`` times, interleaved, and the medians compared.

1. The bare encoder: every tracklet's frames are decoded, cropped and
   normalised first (not timed), then only ``embed_sequences`` is timed.
2. The pipeline: :func:`indexer.pipeline.index_sources` on the same procedures
   into a fresh SQLite store and index (decode, crop, embed, SQL commit, FAISS
   add, snapshot), timed end to end, with the decode/crop prefetch thread
   (``--prefetch``, default 2 chunks) and without it (``prefetch=0``).

The difference is the pipeline's overhead; ``pipeline_over_bare`` is the pipeline's
throughput as a fraction of the bare encoder's (the goal: >= 0.9 with prefetch).
``--model`` takes an exported ONNX encoder; without it a deterministic numpy stand-in (``benchmarks/stand_in.py``)
is used, which measures the pipeline's own cost.

    python benchmarks/index_throughput.py --data var/data/synth --split test \
        --procedures 3 --out var/bench/index_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment
from polypindex.benchmarks.stand_in import StandInEncoder
from polypindex.indexer.embed import Embedder
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.sources import coco_sources
from polypindex.indexer.store import Store
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.embedding import EMBED_CHUNK, CropStream, selected_frames
from polypindex.model.data.preprocess import normalize


def bare_encoder(sources: list[Any], encoder: Embedder, batch_size: int) -> dict[str, float]:
    """Crop every tracklet as the pipeline does (not timed), then time ``embed_sequences``."""
    seqs: list[np.ndarray] = []
    for src in sources:
        stream = CropStream(
            [(t.frame_ids, t.boxes) for t in src.tracklets],
            [[selected_frames(len(t), encoder.fragment)] for t in src.tracklets],
            src.frames,
            encoder.preprocess,
        )
        crops: dict[int, np.ndarray] = {ti: seq for done in stream for ti, (seq,) in done}
        seqs.extend(normalize(crops[ti], encoder.preprocess) for ti in sorted(crops))
    t0 = time.perf_counter()
    for start in range(0, len(seqs), EMBED_CHUNK):
        encoder.embed_sequences(seqs[start : start + EMBED_CHUNK], batch_size=batch_size)
    seconds = time.perf_counter() - t0
    frames = sum(len(s) for s in seqs)
    return {
        "tracklets": len(seqs),
        "frames": frames,
        "seconds": round(seconds, 3),
        "tracklets_per_s": round(len(seqs) / seconds, 2),
        "frames_per_s": round(frames / seconds, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=Path("var/data/synth"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--procedures", type=int, default=3, help="first N procedures")
    parser.add_argument(
        "--model", type=Path, default=None, help="ONNX encoder (default: the stand-in)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=2, help="chunks decoded ahead")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of each mode")
    parser.add_argument("--runtime", default="onnxruntime", help="encoder runtime (--model)")
    parser.add_argument("--precision", default="fp32", help="encoder precision (--model)")
    parser.add_argument("--out", type=Path, default=Path("var/bench/index_throughput.json"))
    args = parser.parse_args(argv)

    encoder: Any
    if args.model:
        from polypindex.model.runtime.loader import load_encoder

        encoder = load_encoder(args.model, args.runtime, args.precision)
        label = f"{args.model} ({encoder.describe()})"
    else:
        encoder, label = StandInEncoder(), "stand-in (numpy, benchmarks.stand_in.StandInEncoder)"
    sources = coco_sources(args.data, args.split, TrackletConfig())[: args.procedures]
    keep = ("tracklets", "frames", "images_decoded", "tracklets_per_s", "frames_per_s")

    def pipeline_run(depth: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(f"sqlite:///{tmp}/db.sqlite")
            report = index_sources(
                sources,
                store,
                Path(tmp) / "index",
                encoder,
                progress=False,
                batch_size=args.batch_size,
                prefetch=depth,
            )
            store.close()
        out = {k: v for k, v in report.to_dict().items() if k in keep}
        return {**out, "seconds": report.seconds, "prefetch": depth}

    modes: dict[str, Any] = {
        "bare_encoder": lambda: bare_encoder(sources, encoder, args.batch_size),
        "pipeline_prefetch": lambda: pipeline_run(args.prefetch),
        "pipeline_no_prefetch": lambda: pipeline_run(0),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
    names = list(modes)
    for i in range(args.rounds):  # interleaved rounds, the order rotating
        for name in names[i % len(names) :] + names[: i % len(names)]:
            runs[name].append(modes[name]())
    summary: dict[str, dict[str, Any]] = {}
    for name, values in runs.items():
        seconds = [float(v["seconds"]) for v in values]
        median = statistics.median(seconds)
        summary[name] = {
            **{k: values[0][k] for k in ("tracklets", "frames") if k in values[0]},
            "seconds_median": round(median, 3),
            "seconds_all": [round(x, 3) for x in seconds],
            "tracklets_per_s": round(values[0]["tracklets"] / median, 3),
            "frames_per_s": round(values[0]["frames"] / median, 3),
        }
    bare = summary["bare_encoder"]
    for name in ("pipeline_prefetch", "pipeline_no_prefetch"):
        summary[name]["pipeline_over_bare"] = round(
            bare["seconds_median"] / summary[name]["seconds_median"], 3
        )
    pipeline = summary["pipeline_prefetch"]
    result = {
        "benchmark": "index_throughput",
        "environment": environment(),
        "encoder": label,
        "encoder_version": encoder.version,
        "data": str(args.data),
        "split": args.split,
        "procedures": [s.uid for s in sources],
        "bare_encoder": bare,
        "pipeline": pipeline,
        "pipeline_no_prefetch": summary["pipeline_no_prefetch"],
        "rounds": args.rounds,
        "pipeline_overhead_fraction": round(
            1 - bare["seconds_median"] / pipeline["seconds_median"], 3
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
