"""Writing a dataset: plan, render the procedures (in a process pool), then the COCO
annotation file of each split and the report.
"""

from __future__ import annotations

import json
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from polypindex.synth.config import SynthConfig
from polypindex.synth.plan import plan, split_procedures
from polypindex.synth.render import render_procedure


def _balance(anns: list[dict[str, Any]]) -> dict[str, int]:
    polyps = {a["identity_id"]: a for a in anns}
    return {
        "polyps": len(polyps),
        "diminutive_le_5mm": sum(a["size"] <= 5.0 for a in polyps.values()),
        "larger_gt_5mm": sum(a["size"] > 5.0 for a in polyps.values()),
        "adenoma": sum(a["histology"] == "adenoma" for a in polyps.values()),
        "non_adenoma": sum(a["histology"] != "adenoma" for a in polyps.values()),
    }


def generate(
    out_dir: Path, config: SynthConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Write a synthetic dataset in the dataset format of docs/method.md#data-format.

    Writes ``out_dir/images/*.jpg`` (only frames that show a polyp),
    ``out_dir/annotations/instances_{train,val,test}.json`` and
    ``out_dir/synth_report.json``. Procedures render in a process pool of
    ``config.workers``; the result does not depend on the number of workers.

    Args:
        out_dir: Dataset root; created if missing.
        config: Generator settings (default ``SynthConfig()``).
        progress: Show a tqdm bar over procedures.

    Returns:
        The report: per split the procedures (count and sequence ids), polyps,
        tracklets, frames, annotations, look-alikes, frames with two or more
        polyps and the label balance (size <= 5 mm vs > 5 mm, adenoma vs not,
        counted per polyp); plus the config and the seed.
    """
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    procedures = plan(config)
    jobs = [(p, config, procedures[p], str(out_dir / "images")) for p in range(config.n_procedures)]
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="synth procedures", unit="proc", disable=not progress)
    if config.workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(config.workers, len(jobs))) as pool:
            for res in pool.imap_unordered(render_procedure, jobs):
                results[res["procedure"]] = res
                bar.update()
    else:
        for job in jobs:
            res = render_procedure(job)
            results[res["procedure"]] = res
            bar.update()
    bar.close()
    report: dict[str, Any] = {"seed": config.seed, "config": config.report_dict(), "splits": {}}
    for split, members in split_procedures(config).items():
        images = [img for p in members for img in results[p]["images"]]
        anns = [a for p in members for a in results[p]["annotations"]]
        data = {
            "info": {
                "description": "PolypIndex synthetic colonoscopies (polypindex.synth)",
                "version": "1",
                "split": split,
                "seed": config.seed,
            },
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "polyp"}],
        }
        (out_dir / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(data, sort_keys=True)
        )
        per_image: dict[int, int] = {}
        for a in anns:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        shown = {a["identity_id"] for a in anns}
        report["splits"][split] = {
            "procedures": len(members),
            "sequence_ids": [results[p]["sequence_id"] for p in members],
            "tracklets": sum(results[p]["tracklets"] for p in members),
            "frames": len(images),
            "annotations": len(anns),
            "frames_with_several_polyps": sum(c > 1 for c in per_image.values()),
            "lookalikes": sum(
                spec.lookalike_of is not None and spec.identity_id in shown
                for p in members
                for spec in procedures[p]
            ),
            **_balance(anns),
        }
    text = json.dumps(report, indent=2, sort_keys=True)
    (out_dir / "synth_report.json").write_text(text)
    return dict(json.loads(text))  # what the file holds (tuples become lists)
