"""What the linker of raw detections does to retrieval and counting (docs/results.md).

:mod:`benchmarks.linkers` scores the linkers as trackers (HOTA / IDF1); this module
scores what the index then does with their tracklets. On a synthetic set's test split,
per seed, detections without ids are made from the ground truth as that module makes
them (:func:`~benchmarks.linkers.make_detections`: boxes dropped, jittered, scored, plus
false positives; only on frames the set has an image of, since a synthetic set writes
only the frames that show a polyp), linked by each linker and cut into tracklets by the
gap rule with each ``--separations`` gap (``TrackletConfig(separation_thresh=N)``, the
other settings the defaults: IoU 0.1, at least 30 frames). Each linked tracklet is given
the identity most of its boxes show (a box shows the polyp whose annotated box in that
frame overlaps it most, if by IoU ≥ 0.5); a tracklet none of whose boxes shows a polyp
is a **false tracklet**, an identity of its own. The reference row **annotated** is the
annotated tracklets (``TrackletConfig()``), what ``polypindex bench retrieval`` and
``bench counting`` score.

Every row is embedded whole by the model (:func:`~benchmarks.protocols.embed_tracklets_onnx`)
and scored:

- **retrieval**: mAP and HR@1/5 with every tracklet querying all others of the split
  (pooled), and mAP with each querying only its own procedure's (within procedure);
- **counting**: each procedure's tracklets grouped into entities by the default method
  (average linkage under the cannot-link rule, :func:`model.scoring.grouping.group`) on
  their cosines mapped onto [0, 1], at one cut for every row: the cut chosen on the
  annotated tracklets of ``--fit-split`` of ``--fit-data`` (the first set's validation
  split; lowest fragmentation below 5 % merge FP, as ``bench counting`` picks its
  operating point on the fit split) — the grouping is the same for every row, only the
  tracklets change. Then entities − annotated polyps per procedure (count error), and
  over the tracklets that show a polyp the fragmentation, merge FP rate and ARI of
  :func:`~benchmarks.counting.evaluate_labels`;
- **tracklets**: how many, the polyps left without one, the false ones, the annotated
  boxes they cover, and their purity (the share of a tracklet's boxes showing its identity).

    python -m polypindex.benchmarks.linker_effect --model var/models/demo/encoder.onnx \\
        --set default=var/data/synth --set shifted=var/data/synth_shifted --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.counting import MAX_MERGE_FP, evaluate_labels
from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.linkers import RESULTS, ground_truth, make_detections
from polypindex.benchmarks.protocols import embed_tracklets_onnx
from polypindex.model.core.layout import Layout
from polypindex.model.data.coco import CocoSplit, load_coco_split
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import LINKERS, Tracklet, box_iou_matrix, link
from polypindex.model.runtime.base import EncoderBase
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.evaluation import retrieval_metrics
from polypindex.model.scoring.grouping import DEFAULT_METHOD, TrackletSpan, group

SHOWS_IOU = 0.5  # a detected box shows the annotated polyp it overlaps at least this much
GROUPING = DEFAULT_METHOD


class Truth:
    """A split's annotations per procedure: frame → (identities, boxes), frame images."""

    def __init__(self, split: CocoSplit) -> None:
        self.boxes: dict[str, dict[int, tuple[list[str], list[list[float]]]]] = {}
        self.images: dict[str, dict[int, str]] = {}
        for ann in split.coco.anns.values():
            img = split.coco.imgs[ann["image_id"]]
            seq, frame = str(img["sequence_id"]), int(img["frame_id"])
            ids, boxes = self.boxes.setdefault(seq, {}).setdefault(frame, ([], []))
            ids.append(str(ann["identity_id"]))
            boxes.append([float(v) for v in ann["bbox"]])
        for img in split.coco.imgs.values():
            path = str(split.image_path(img))
            self.images.setdefault(str(img["sequence_id"]), {})[int(img["frame_id"])] = path
        self.polyps = {
            seq: sorted({i for ids, _ in frames.values() for i in ids})
            for seq, frames in self.boxes.items()
        }

    def shown(self, seq: str, frame: int, box: np.ndarray) -> str | None:
        """The polyp ``box`` shows in ``frame`` (module docstring), or ``None``."""
        found = self.boxes[seq].get(frame)
        if not found:
            return None
        iou = box_iou_matrix(np.asarray(found[1]), box)[:, 0]
        best = int(np.argmax(iou))
        return found[0][best] if iou[best] >= SHOWS_IOU else None


def linked_tracklets(
    truth: Truth,
    dets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    linker: str,
    config: TrackletConfig,
) -> tuple[list[Tracklet], list[float], int]:
    """The linker's tracklets of every procedure, each with its majority identity;
    their purities; the annotated boxes they cover."""
    out: list[Tracklet] = []
    purity: list[float] = []
    covered = 0
    for seq, (frames, boxes, scores) in sorted(dets.items()):
        images = truth.images[seq]
        seen = np.isin(frames, list(images))  # the frames the set has an image of
        frames, boxes, scores = frames[seen], boxes[seen], scores[seen]
        for k, run in enumerate(link(frames, boxes, scores, config, linker)):
            fids = frames[run]
            shows = [truth.shown(seq, int(f), boxes[i]) for f, i in zip(fids, run, strict=True)]
            votes = Counter(s for s in shows if s is not None)
            identity, n = votes.most_common(1)[0] if votes else (f"false:{seq}:{k}", 0)
            purity.append(n / len(run))
            covered += n
            out.append(
                Tracklet(
                    sequence_id=seq,
                    identity_id=identity,
                    index=k,
                    frame_ids=fids.astype(np.int64),
                    boxes=boxes[run].astype(np.float32),
                    image_paths=tuple(images[int(f)] for f in fids),
                    metadata={"false": not votes},
                )
            )
    return out, purity, covered


def _within_procedure_map(emb: np.ndarray, tracklets: list[Tracklet]) -> float | None:
    """mAP of every tracklet querying only its own procedure's others (pooled queries)."""
    aps: list[float] = []
    for seq in sorted({t.sequence_id for t in tracklets}):
        rows = [i for i, t in enumerate(tracklets) if t.sequence_id == seq]
        ids = [str(tracklets[i].identity_id) for i in rows]
        if len(rows) < 2 or len(set(ids)) == len(ids):
            continue  # no query with another tracklet of its polyp here
        ap = retrieval_metrics(emb[rows], ids).per_query_ap
        aps.extend(float(a) for a in ap[~np.isnan(ap)])
    return float(np.mean(aps)) if aps else None


def _similarities(emb: np.ndarray, rows: list[int]) -> np.ndarray:
    """The grouping's pair score of ``rows``: their cosine mapped onto [0, 1]."""
    e = emb[rows] / np.maximum(np.linalg.norm(emb[rows], axis=1, keepdims=True), 1e-12)
    return np.asarray((np.clip(e @ e.T, -1.0, 1.0) + 1.0) / 2.0, dtype=np.float64)


def _entities(emb: np.ndarray, tracklets: list[Tracklet], rows: list[int], cut: float) -> Any:
    spans = [
        TrackletSpan(k, tracklets[i].frame_ids, tracklets[i].boxes) for k, i in enumerate(rows)
    ]
    return group(spans, _similarities(emb, rows), GROUPING, cut)


def choose_cut(encoder: EncoderBase, data: Path, split: str, cache_dir: Path) -> dict[str, Any]:
    """The grouping cut of every row: on ``split``'s annotated tracklets, the cut of
    lowest fragmentation below 5 % merge FP (ties: the lower merge FP, then the lower
    cut), as ``bench counting`` chooses its operating point on the fit split."""
    tracklets = load_coco_split(data, split).tracklets(TrackletConfig())
    emb = embed_tracklets_onnx(encoder, tracklets, cache_dir, progress=False)
    by_seq: dict[str, list[int]] = {}
    for i, t in enumerate(tracklets):
        by_seq.setdefault(t.sequence_id, []).append(i)
    curve = []
    for cut in np.round(np.linspace(0.5, 1.0, 101), 4):
        procedures = [
            ([str(tracklets[i].identity_id) for i in rows], _entities(emb, tracklets, rows, cut))
            for rows in by_seq.values()
        ]
        curve.append({"cut": float(cut), **evaluate_labels(procedures)})
    ok = [c for c in curve if c["merge_fp_rate"] < MAX_MERGE_FP] or curve[-1:]
    best = min(ok, key=lambda c: (c["fragmentation"], c["merge_fp_rate"], c["cut"]))
    keys = ("cut", "fragmentation", "merge_fp_rate", "count_error_abs_mean")
    return {"data": str(data), "split": split, "tracklets": len(tracklets)} | {
        k: best[k] for k in keys
    }


def _retrieval(emb: np.ndarray, identities: list[str]) -> dict[str, Any]:
    """Pooled mAP, HR@1, HR@5 and the queries scored (``None`` where no query has another
    tracklet of its polyp, e.g. no tracklet at all)."""
    if len(set(identities)) == len(identities):
        return dict.fromkeys(("map", "hr1", "hr5"), None) | {"queries": 0}
    r = retrieval_metrics(emb, identities)
    return {"map": r.map, "hr1": r.hit_rate[1], "hr5": r.hit_rate[5], "queries": r.n_queries}


def score_tracklets(
    encoder: EncoderBase, truth: Truth, tracklets: list[Tracklet], cut: float, cache_dir: Path
) -> dict[str, Any]:
    """Retrieval and counting of one row's tracklets (module docstring)."""
    emb = np.zeros((0, 1), dtype=np.float32)
    if tracklets:
        emb = embed_tracklets_onnx(encoder, tracklets, cache_dir, progress=False)
    identities = [str(t.identity_id) for t in tracklets]
    procedures, errors, per_polyp = [], {}, []
    for seq in sorted(truth.polyps):
        rows = [i for i, t in enumerate(tracklets) if t.sequence_id == seq]
        labels = _entities(emb, tracklets, rows, cut) if rows else np.zeros(0, dtype=np.int64)
        errors[seq] = len(np.unique(labels)) - len(truth.polyps[seq])
        per_polyp.append(len(rows) / len(truth.polyps[seq]))
        real = [j for j, i in enumerate(rows) if not tracklets[i].metadata.get("false")]
        if real:
            procedures.append(([identities[rows[j]] for j in real], labels[real]))
    counting: dict[str, Any] = dict.fromkeys(("fragmentation", "merge_fp_rate", "ari_mean"))
    if procedures:
        counting = evaluate_labels(procedures)
    shown = {(t.sequence_id, t.identity_id) for t in tracklets if not t.metadata.get("false")}
    return {
        "tracklets": len(tracklets),
        "false_tracklets": sum(bool(t.metadata.get("false")) for t in tracklets),
        "polyps": sum(len(p) for p in truth.polyps.values()),
        "polyps_without_tracklet": sum(
            (seq, p) not in shown for seq, ps in truth.polyps.items() for p in ps
        ),
        "tracklets_per_polyp": float(np.mean(per_polyp)),
        **_retrieval(emb, identities),
        "map_within_procedure": _within_procedure_map(emb, tracklets),
        "count_error_mean": float(np.mean(list(errors.values()))),
        "count_error_abs_mean": float(np.mean(np.abs(list(errors.values())))),
        "count_errors": errors,
        "fragmentation": counting["fragmentation"],
        "merge_fp_rate": counting["merge_fp_rate"],
        "ari_mean": counting["ari_mean"],
    }


METRICS: tuple[str, ...] = ("tracklets", "false_tracklets", "polyps_without_tracklet")
METRICS += (
    "tracklets_per_polyp",
    "coverage",
    "purity",
    "map",
    "hr1",
    "hr5",
    "map_within_procedure",
    "count_error_mean",
)
METRICS += ("count_error_abs_mean", "fragmentation", "merge_fp_rate", "ari_mean")


def run_set(
    name: str, data: Path, encoder: EncoderBase, cut: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Every row of one set (module docstring)."""
    split = load_coco_split(data, args.split)
    truth = Truth(split)
    gts = ground_truth(data, [args.split])
    n_boxes = sum(len(g) for g in gts.values())
    first = next(iter(split.coco.imgs.values()))
    size = (int(first["width"]), int(first["height"]))
    cache = args.work / name
    annotated = split.tracklets(TrackletConfig())
    rows = [
        {
            "row": "annotated",
            **score_tracklets(encoder, truth, annotated, cut, cache),
            "coverage": sum(len(t) for t in annotated) / n_boxes,
            "purity": 1.0,
        }
    ]
    print(_line(name, rows[-1]), flush=True)
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        dets = {
            seq: make_detections(gt, rng, args.drop, args.jitter, args.false_positives, size)
            for seq, gt in gts.items()
        }
        for linker in LINKERS:
            for sep in args.separations:
                t0 = time.perf_counter()
                config = TrackletConfig(separation_thresh=sep)
                tracklets, purity, covered = linked_tracklets(truth, dets, linker, config)
                row = {"row": f"{linker}/sep{sep}", "seed": seed, "linker": linker}
                row |= {"separation": sep}
                row |= score_tracklets(encoder, truth, tracklets, cut, cache)
                row |= {"coverage": covered / n_boxes, "purity": float(np.mean(purity or [0.0]))}
                rows.append(row | {"seconds": time.perf_counter() - t0})
                print(_line(name, rows[-1]), flush=True)
    summary: dict[str, Any] = {}
    for row in rows:
        summary.setdefault(row["row"], []).append(row)
    return {
        "data": str(data),
        "split": args.split,
        "gt_boxes": n_boxes,
        "rows": rows,
        "summary": {
            key: {
                m: {
                    "mean": float(np.mean([r[m] for r in sel])),
                    "std": float(np.std([r[m] for r in sel])),
                }
                for m in METRICS
                if all(r[m] is not None for r in sel)
            }
            for key, sel in summary.items()
        },
    }


def _line(name: str, row: dict[str, Any]) -> str:
    keys: tuple[str, ...] = ("tracklets", "map", "map_within_procedure")
    keys += ("count_error_abs_mean", "fragmentation")
    cells = " ".join(f"{k}={row[k]:.3f}" if row[k] is not None else f"{k}=-" for k in keys)
    return f"{name} {row['row']} seed={row.get('seed', '-')} {cells}"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table per set: mean ± std over the seeds of each row."""
    cols: tuple[str, ...] = ("tracklets", "false_tracklets", "polyps_without_tracklet")
    cols += (
        "purity",
        "map",
        "map_within_procedure",
        "count_error_abs_mean",
        "fragmentation",
        "merge_fp_rate",
    )
    out = []
    for name, res in result["sets"].items():
        out.append(f"**{name}** ({res['data']}, {res['split']} split)\n")
        out.append("| row | " + " | ".join(cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for key, s in res["summary"].items():
            cells = [
                (
                    f"{s[c]['mean']:.3f} ± {s[c]['std']:.3f}"
                    if s[c]["std"]
                    else f"{s[c]['mean']:.3f}"
                )
                if c in s
                else "–"
                for c in cols
            ]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported encoder (ONNX)")
    parser.add_argument(
        "--set", action="append", required=True, help="NAME=DIR, a polypindex synth set"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--fit-data", type=Path, default=None, help="default: the first --set")
    parser.add_argument("--fit-split", default="val", help="where the grouping cut is chosen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--separations", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--jitter", type=float, default=0.04)
    parser.add_argument("--false-positives", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=Path("var/bench/linker_effect"))
    parser.add_argument("--out", type=Path, default=RESULTS / "linker_effect.json")
    args = parser.parse_args(argv)
    encoder = layout_encoder(Layout(), args.model)
    named = [(name, Path(path)) for name, _, path in (s.partition("=") for s in args.set)]
    fit_data = args.fit_data or named[0][1]
    chosen = choose_cut(encoder, fit_data, args.fit_split, args.work / "fit")
    print(f"grouping cut {chosen}", flush=True)
    sets = {name: run_set(name, path, encoder, chosen["cut"], args) for name, path in named}
    result = {
        "benchmark": "linker_effect",
        "model": str(args.model),
        "encoder_version": encoder.version,
        "detections": {
            "drop": args.drop,
            "jitter": args.jitter,
            "false_positives_per_frame": args.false_positives,
        },
        "seeds": list(args.seeds),
        "separations": list(args.separations),
        "grouping": {"method": GROUPING, "score": "(cosine + 1) / 2", **chosen},
        "sets": sets,
        "environment": environment(),
    }
    result["table"] = format_table(result)
    write_result(args.out, result, echo=False)
    print(result["table"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
