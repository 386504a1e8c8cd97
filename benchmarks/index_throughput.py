"""Indexing throughput next to the bare encoder's, on the same tracklets, in one run.

1. The bare encoder: every tracklet's frames are decoded, cropped and
   normalised first (not timed), then only ``embed_sequences`` is timed.
2. The pipeline: :func:`indexer.pipeline.index_sources` on the same procedures
   into a fresh SQLite store and index (decode, crop, embed, SQL commit, FAISS
   add, snapshot), timed end to end.

The difference is the pipeline's overhead. ``--model`` takes an exported ONNX
encoder; without it the deterministic numpy fake encoder (``indexer.testing``)
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

from polypindex.benchmarks.index_search import environment
from polypindex.indexer.pipeline import _EMBED_CHUNK, Embedder, _selected_frames, index_sources
from polypindex.indexer.sources import coco_sources
from polypindex.indexer.store import Store
from polypindex.indexer.testing import FakeEncoder
from polypindex.model.config import TrackletConfig
from polypindex.model.preprocess import crop_frame, normalize


def bare_encoder(sources: list[Any], encoder: Embedder, batch_size: int) -> dict[str, float]:
    seqs: list[np.ndarray] = []
    for src in sources:
        needs: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        stacks = []
        for tracklet in src.tracklets:
            sel = _selected_frames(len(tracklet), encoder)
            size = encoder.preprocess.im_size
            stacks.append(np.empty((len(sel), size, size, 3), dtype=np.uint8))
            for slot, pos in enumerate(sel):
                needs.setdefault(int(tracklet.frame_ids[pos]), []).append(
                    (len(stacks) - 1, slot, tracklet.boxes[pos])
                )
        for frame, image in src.frames(sorted(needs)):
            for ti, slot, box in needs[frame]:
                stacks[ti][slot] = crop_frame(image, box, encoder.preprocess)
        seqs.extend(normalize(s, encoder.preprocess) for s in stacks)
    t0 = time.perf_counter()
    for start in range(0, len(seqs), _EMBED_CHUNK):
        encoder.embed_sequences(seqs[start : start + _EMBED_CHUNK], batch_size=batch_size)
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
    parser.add_argument("--model", type=Path, default=None, help="ONNX encoder (default: fake)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("var/bench/index_throughput.json"))
    args = parser.parse_args(argv)

    encoder: Any
    if args.model:
        from polypindex.model.runtime import OnnxEncoder

        encoder, label = OnnxEncoder(args.model), str(args.model)
    else:
        encoder, label = FakeEncoder(), "fake (numpy, indexer.testing.FakeEncoder)"
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
