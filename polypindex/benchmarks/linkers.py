"""Linkers of raw detections (docs/inputs.md#linkers): ByteTrack vs the greedy IoU tracker.

Ground truth: a synthetic COCO dataset (``polypindex synth``), every box with its polyp
identity. Its tracks are the **visits**: one polyp's boxes cut where a frame is skipped
(a polyp seen again after leaving the screen is a new track: finding it again is the
index's job, not a linker's). Detections are made from it as an upstream detector
would give them (seeded): each box dropped with ``--drop`` probability (each on its own,
or in runs: the sweep's ``DROP:BURST``), its corners jittered by ``--jitter`` of its
size, a score drawn in ``--score-range`` (default [0.5, 1]); plus false positives
(``--false-positives`` per frame on average, random boxes scoring in [0.1, 0.6]).
A procedure left without any track is scored as one 1×1 box (one false positive: the
evaluator refuses an empty file).

Each linker runs on each procedure's detections; two outputs are scored:

- **linker**: its tracks as they are (ByteTrack's ids; greedy with no minimum length);
- **tracklets_sep1**: what indexing keeps — the tracks cut by the gap/IoU rule and at
  least ``min_tracklet_length`` frames long (``TrackletConfig()`` defaults: any skipped
  frame cuts), each its own id; **tracklets_sepN** the same with
  ``separation_thresh=N`` (``--separation``, default 5).

With ``--sweep-drops`` it scores instead the tracklets of both linkers for every gap of
``--sweep-separations`` and every detector listed (``linkers_sweep.json``; without the
motmetrics cross-check, ByteTrack run once per detector and seed and cut per gap).

Metrics, pooled over the procedures: HOTA / DetA / AssA and IDF1 / MOTA / IDSW with the
TrackEval-parity evaluator of the ``trackers`` package (``trackers.eval``), and IDF1 /
MOTA / IDSW again with ``motmetrics`` (its own matching, IoU ≥ 0.5) as a cross-check.

    python -m polypindex.benchmarks.linkers --data var/data/synth --seeds 0 1 2
    python -m polypindex.benchmarks.linkers --data var/data/synth --seeds 0 1 \\
        --sweep-drops 0 0.1 0.2 0.1:4 --sweep-separations 1 2 3 5 10 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import (
    box_iou_matrix,
    bytetrack_tracks,
    cut_tracks,
    link,
    link_detections,
)

RESULTS = Path(__file__).resolve().parent / "results"


def ground_truth(data: Path, splits: Sequence[str]) -> dict[str, np.ndarray]:
    """Per sequence, rows ``(frame, gt_track, x, y, w, h)`` (visits: identity cut at skips)."""
    by_seq: dict[str, list[tuple[int, str, list[float]]]] = {}
    for split in splits:
        coco = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        images = {im["id"]: im for im in coco["images"]}
        for ann in coco["annotations"]:
            im = images[ann["image_id"]]
            by_seq.setdefault(str(im["sequence_id"]), []).append(
                (int(im["frame_id"]), str(ann["identity_id"]), [float(v) for v in ann["bbox"]])
            )
    out = {}
    for seq, rows in sorted(by_seq.items()):
        rows.sort(key=lambda r: (r[1], r[0]))
        track, table = -1, []
        prev: tuple[str | None, int] = (None, -10)
        for frame, identity, box in rows:
            if identity != prev[0] or frame - prev[1] > 1:
                track += 1
            prev = (identity, frame)
            table.append([frame, track, *box])
        out[seq] = np.asarray(sorted(table), dtype=np.float64)
    return out


def make_detections(
    gt: np.ndarray,
    rng: np.random.Generator,
    drop: float,
    jitter: float,
    fps_per_frame: float,
    size: tuple[int, int],
    burst: float = 1.0,
    score_range: tuple[float, float] = (0.5, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(frames, boxes xywh, scores)`` of a realistic detector on one sequence; a true
    box scores uniformly in ``score_range``, a false positive in [0.1, 0.6].

    ``burst`` > 1: the misses come in runs of ``burst`` frames on average (per track, a
    two-state Markov chain with the same miss fraction ``drop``), as a detector misses
    a polyp for a few frames of blur or glare; 1: each box is missed on its own.
    """
    keep = rng.random(len(gt)) >= drop if burst <= 1.0 else _bursty_keep(gt, rng, drop, burst)
    frames = gt[keep, 0].astype(np.int64)
    boxes = gt[keep, 2:6].copy()
    wh = np.repeat(boxes[:, 2:4], 2, axis=1)
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    corners += rng.normal(0.0, jitter, corners.shape) * wh
    corners[:, 2:] = np.maximum(corners[:, 2:], corners[:, :2] + 1.0)
    boxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    scores = rng.uniform(*score_range, len(boxes))
    first, last = int(gt[:, 0].min()), int(gt[:, 0].max())
    n_fp = rng.poisson(fps_per_frame * (last - first + 1))
    width, height = size
    fp_wh = rng.uniform(10, 40, (n_fp, 2))
    fp_xy = rng.uniform(0, 1, (n_fp, 2)) * (np.array([width, height]) - fp_wh)
    frames = np.concatenate([frames, rng.integers(first, last + 1, n_fp)])
    boxes = np.concatenate([boxes, np.concatenate([fp_xy, fp_wh], axis=1)])
    scores = np.concatenate([scores, rng.uniform(0.1, 0.6, n_fp)])
    return frames, boxes, scores


def _bursty_keep(gt: np.ndarray, rng: np.random.Generator, drop: float, burst: float) -> np.ndarray:
    """A keep mask of ``gt``'s rows whose misses last ``burst`` frames on average."""
    leave, enter = 1.0 / burst, drop / (burst * (1.0 - drop))  # miss→seen, seen→miss
    keep = np.ones(len(gt), dtype=bool)
    for track in np.unique(gt[:, 1]):
        rows = np.flatnonzero(gt[:, 1] == track)
        rows = rows[np.argsort(gt[rows, 0], kind="stable")]
        missed = rng.random() < drop
        for r, u in zip(rows, rng.random(len(rows)), strict=True):
            keep[r] = not missed
            missed = u >= leave if missed else u < enter
    return keep


def hypotheses(
    linker: str, stage: str, frames: np.ndarray, boxes: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Rows ``(frame, hyp_id, x, y, w, h)`` of one linker's output."""
    if stage == "linker":
        raw = TrackletConfig(min_tracklet_length=1)
        if linker == "bytetrack":
            runs = list(bytetrack_tracks(frames, boxes, scores, raw).values())
        else:
            runs = link_detections(frames, boxes, raw)
    else:
        separation = int(stage.removeprefix("tracklets_sep"))
        runs = link(frames, boxes, scores, TrackletConfig(separation_thresh=separation), linker)
    return _rows(runs, frames, boxes)


def _rows(runs: Sequence[np.ndarray], frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    rows = [[frames[i], h, *boxes[i]] for h, run in enumerate(runs) for i in run]
    return np.asarray(sorted(rows), dtype=np.float64).reshape(-1, 6)


def _write_mot(path: Path, rows: np.ndarray, gt: bool) -> None:
    """A MOTChallenge file: ground truth as ``...,1,1,1`` (considered, class 1, visible)."""
    tail = "1,1,1" if gt else "1,-1,-1,-1"
    if not len(rows):  # the evaluator refuses an empty file: one 1x1 box, one false positive
        rows = np.asarray([[0, 0, 0.0, 0.0, 1.0, 1.0]])
    lines = [
        f"{int(f) + 1},{int(t) + 1},{x:.3f},{y:.3f},{w:.3f},{h:.3f},{tail}"
        for f, t, x, y, w, h in rows
    ]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def motmetrics_scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """IDF1 / MOTA / IDSW pooled over sequences by motmetrics (IoU >= 0.5 matches)."""
    import motmetrics as mm

    accs = []
    for gt, hyp in pairs:
        acc = mm.MOTAccumulator(auto_id=True)
        for frame in np.unique(np.concatenate([gt[:, 0], hyp[:, 0]])):
            g, h = gt[gt[:, 0] == frame], hyp[hyp[:, 0] == frame]
            dist = 1.0 - box_iou_matrix(g[:, 2:6], h[:, 2:6])
            dist[dist > 0.5] = np.nan
            acc.update(g[:, 1].astype(int).tolist(), h[:, 1].astype(int).tolist(), dist)
        accs.append(acc)
    mh = mm.metrics.create()
    summary = mh.compute_many(accs, metrics=["idf1", "mota", "num_switches"], generate_overall=True)
    overall = summary.loc["OVERALL"]
    return {k: float(overall[k]) for k in ("idf1", "mota", "num_switches")}


def score(
    gts: dict[str, np.ndarray], hyps: dict[str, np.ndarray], cross_check: bool = True
) -> dict[str, Any]:
    """HOTA / DetA / AssA / IDF1 / MOTA / IDSW (``trackers.eval``) and the motmetrics
    cross-check (``cross_check``) of hypotheses against ground truth, pooled over the
    sequences."""
    from trackers.eval import evaluate_mot_sequences

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, hyp_dir = Path(tmp, "gt"), Path(tmp, "hyp")
        gt_dir.mkdir()
        hyp_dir.mkdir()
        for seq, gt in gts.items():
            _write_mot(gt_dir / f"{seq}.txt", gt, gt=True)
            _write_mot(hyp_dir / f"{seq}.txt", hyps[seq], gt=False)
        result = evaluate_mot_sequences(gt_dir, hyp_dir, metrics=["CLEAR", "HOTA", "Identity"])
    agg = result.aggregate
    assert agg.HOTA is not None and agg.CLEAR is not None and agg.Identity is not None
    return {
        "HOTA": agg.HOTA.HOTA,
        "DetA": agg.HOTA.DetA,
        "AssA": agg.HOTA.AssA,
        "IDF1": agg.Identity.IDF1,
        "MOTA": agg.CLEAR.MOTA,
        "IDSW": int(agg.CLEAR.IDSW),
        "motmetrics": (
            motmetrics_scores([(gt, hyps[seq]) for seq, gt in gts.items()]) if cross_check else None
        ),
        "hypothesis_tracks": int(sum(len(np.unique(h[:, 1])) for h in hyps.values())),
    }


def _summary(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean and std over seeds of each metric, per group of ``keys`` (``a/b/...``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault("/".join(str(r[k]) for k in keys), []).append(r)
    return {
        name: {
            k: {
                "mean": float(np.mean([r[k] for r in sel])),
                "std": float(np.std([r[k] for r in sel])),
            }
            for k in ("HOTA", "DetA", "AssA", "IDF1", "MOTA", "IDSW")
        }
        | (
            {"motmetrics_idf1_mean": float(np.mean([r["motmetrics"]["idf1"] for r in sel]))}
            if all(r["motmetrics"] for r in sel)
            else {}
        )
        for name, sel in groups.items()
    }


def frame_size(data: Path, split: str) -> tuple[int, int]:
    """``(width, height)`` of the set's frames (its first image)."""
    coco = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
    return int(coco["images"][0]["width"]), int(coco["images"][0]["height"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    gts = ground_truth(args.data, args.splits)
    size = frame_size(args.data, args.splits[0])
    stages = ["linker", "tracklets_sep1", f"tracklets_sep{args.separation}"]
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        dets = {
            seq: make_detections(
                gt, rng, args.drop, args.jitter, args.false_positives, size, 1.0, args.score_range
            )
            for seq, gt in gts.items()
        }
        for linker in ("bytetrack", "greedy"):
            for stage in stages:
                t0 = time.perf_counter()
                hyps = {seq: hypotheses(linker, stage, *dets[seq]) for seq in gts}
                timings[f"{linker}/{stage}/{seed}"] = time.perf_counter() - t0
                rows.append({"seed": seed, "linker": linker, "stage": stage, **score(gts, hyps)})
                print(json.dumps(rows[-1]))
    return {
        "benchmark": "linkers",
        "data": str(args.data),
        "splits": list(args.splits),
        "sequences": len(gts),
        "gt_boxes": int(sum(len(g) for g in gts.values())),
        "gt_tracks": int(sum(len(np.unique(g[:, 1])) for g in gts.values())),
        "detections": {
            "drop": args.drop,
            "jitter": args.jitter,
            "false_positives_per_frame": args.false_positives,
            "true_score_range": list(args.score_range),
        },
        "seeds": list(args.seeds),
        "rows": rows,
        "summary": _summary(rows, ("linker", "stage")),
        "link_seconds": timings,
        "environment": environment(),
    }


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The tracklets (cut by the gap rule) of both linkers for each ``--sweep-separations``
    gap and each detector of ``--sweep-drops`` (``DROP`` or ``DROP:BURST``)."""
    gts = ground_truth(args.data, args.splits)
    size = frame_size(args.data, args.splits[0])
    rows: list[dict[str, Any]] = []
    for detector in args.sweep_drops:
        drop, _, burst = detector.partition(":")
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            dets = {
                seq: make_detections(
                    gt, rng, float(drop), args.jitter, args.false_positives, size, float(burst or 1)
                )
                for seq, gt in gts.items()
            }
            tracked = {seq: bytetrack_tracks(*dets[seq], TrackletConfig()) for seq in gts}
            for linker in ("bytetrack", "greedy"):
                for sep in args.sweep_separations:
                    config = TrackletConfig(separation_thresh=sep)
                    hyps = {}
                    for seq, (frames, boxes, _) in dets.items():
                        runs = (
                            cut_tracks(tracked[seq].values(), frames, boxes, config)
                            if linker == "bytetrack"
                            else link_detections(frames, boxes, config)
                        )
                        hyps[seq] = _rows(runs, frames, boxes)
                    row = {"detector": detector, "seed": seed, "linker": linker, "separation": sep}
                    rows.append(row | score(gts, hyps, cross_check=False))
                    print(json.dumps({k: rows[-1][k] for k in (*row, "HOTA", "IDF1")}), flush=True)
    return {
        "benchmark": "linkers_sweep",
        "data": str(args.data),
        "splits": list(args.splits),
        "sequences": len(gts),
        "gt_tracks": int(sum(len(np.unique(g[:, 1])) for g in gts.values())),
        "detectors": list(args.sweep_drops),
        "jitter": args.jitter,
        "false_positives_per_frame": args.false_positives,
        "separations": list(args.sweep_separations),
        "seeds": list(args.seeds),
        "rows": rows,
        "summary": _summary(rows, ("detector", "linker", "separation")),
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True, help="a polypindex synth dataset")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--jitter", type=float, default=0.04)
    parser.add_argument("--false-positives", type=float, default=0.05)
    parser.add_argument(
        "--score-range",
        type=float,
        nargs=2,
        default=(0.5, 1.0),
        metavar=("LO", "HI"),
        help="true boxes score uniformly in [LO, HI]",
    )
    parser.add_argument(
        "--separation", type=int, default=5, help="a second tracklet gap rule (frames) to score"
    )
    parser.add_argument(
        "--sweep-drops",
        nargs="+",
        default=None,
        help="sweep instead: detectors as DROP or DROP:BURST (misses in runs of BURST frames)",
    )
    parser.add_argument(
        "--sweep-separations", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 30]
    )
    parser.add_argument("--out", type=Path, default=None, help="default results/linkers.json")
    args = parser.parse_args(argv)
    result = sweep(args) if args.sweep_drops else run(args)
    out = args.out or RESULTS / ("linkers_sweep.json" if args.sweep_drops else "linkers.json")
    write_result(out, result, echo=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
