"""Indexing throughput next to the bare encoder's, on the same tracklets, in one run.

1. The bare encoder: every tracklet's frames are decoded, cropped and
   normalised first (not timed), then only ``embed_sequences`` is timed.
2. The pipeline: :func:`indexer.pipeline.index_sources` on the same procedures
   into a fresh SQLite store and index (decode, crop, embed, SQL commit, FAISS
   add, snapshot), timed end to end.

The difference is the pipeline's overhead. ``--model`` takes an exported ONNX
encoder; without it a deterministic numpy stand-in (``benchmarks/stand_in.py``)
is used, which measures the pipeline's own cost.

    python benchmarks/index_throughput.py --data var/data/synth --split test \
        --procedures 3 --out var/bench/index_throughput.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment
from polypindex.benchmarks.stand_in import StandInEncoder
from polypindex.indexer.pipeline import Embedder, index_sources
from polypindex.indexer.sources import coco_sources
from polypindex.indexer.store import Store
from polypindex.model.config import TrackletConfig
from polypindex.model.embedding import EMBED_CHUNK, CropStream, selected_frames
from polypindex.model.preprocess import normalize


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
    parser.add_argument("--out", type=Path, default=Path("var/bench/index_throughput.json"))
    args = parser.parse_args(argv)

    encoder: Any
    if args.model:
        from polypindex.model.runtime import OnnxEncoder

        encoder, label = OnnxEncoder(args.model), str(args.model)
    else:
        encoder, label = StandInEncoder(), "stand-in (numpy, benchmarks.stand_in.StandInEncoder)"
    sources = coco_sources(args.data, args.split, TrackletConfig())[: args.procedures]
    bare = bare_encoder(sources, encoder, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/db.sqlite")
        report = index_sources(
            sources, store, Path(tmp) / "index", encoder, progress=False, batch_size=args.batch_size
        )
        store.close()
    pipeline = {
        k: v
        for k, v in report.to_dict().items()
        if k
        in ("tracklets", "frames", "images_decoded", "seconds", "tracklets_per_s", "frames_per_s")
    }
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
        "pipeline_overhead_fraction": round(1 - bare["seconds"] / report.seconds, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
