"""Size and histology probe benchmark (docs/method.md#probes).

For each seed, the labelled polyps of the **train** split are divided 70/30 by
polyp (stratified by label, :func:`training.probe.split_polyps`, seeded); a
probe is trained on the 70 % (fixed epochs, last epoch kept) and calibrated by
temperature scaling on the 30 %; it is then evaluated once on the **test**
split. The seed sets the split, the probe's initialisation and its batch order.
Rows:

- ``majority_class``: predicts, for every test polyp, the majority class of the
  seed's probe-training polyps; its probability is their positive fraction.
- ``color_histogram``: the same probe on the non-learned colour histogram of
  each fragment's crop centres (:func:`model.scoring.evaluation.color_histogram_embedding`).
- one row per ``--model``: the probe on that ONNX encoder's fragment embeddings.

Polyp-level decisions are the majority vote over the polyp's fragments (tie →
mean calibrated probability ≥ 0.5); AUROC uses the mean calibrated probability.
ECE (15 equal-width bins of P(positive)) is measured on the test fragments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from polypindex.benchmarks.env import environment
from polypindex.benchmarks.protocols import HISTOGRAM_CROP
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.model.data.config import FragmentConfig
from polypindex.model.data.embedding import cached_sequences
from polypindex.model.data.preprocess import CropCache
from polypindex.model.data.tracklets import Tracklet
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.evaluation import color_histogram_embedding
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.probe import CLASSES, check_task, sigmoid, task_label
from polypindex.training.plots import pyplot, save_reliability_png
from polypindex.training.probe import default_probe_cache, identity_metrics, train_probe
from polypindex.training.probe_data import (
    FragmentSet,
    LabelledFragments,
    cached_fragment_features,
    encoder_fragment_features,
    label_fragments,
    split_polyps,
)
from polypindex.training.probe_head import ProbeTrainConfig

# (metric key, table header); the first is the task's headline metric
HEADLINE = {
    "size": ("macro_f1", "identity macro F1"),
    "histology": ("accuracy", "identity accuracy"),
}
COMMON = (
    ("auroc", "AUROC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ece_before", "ECE before T"),
    ("ece_after", "ECE after T"),
    ("temperature", "T"),
)
HISTOLOGY_EXTRA = (("npv_diminutive", "NPV adenoma, ≤5 mm"),)
DEFAULT_HISTOGRAM_FRAGMENT = FragmentConfig(stride=4, fragment_length=-1, max_frames=64)


def histogram_fragment_features(
    data: Path,
    split: str,
    fragment: FragmentConfig,
    cache_dir: Path | None,
    crop_cache_dir: Path,
    progress: bool = True,
) -> FragmentSet:
    """The colour-histogram features (512-d) of every fragment of a split."""
    crops = CropCache(crop_cache_dir, HISTOGRAM_CROP)

    def compute(items: list[tuple[Tracklet, list[np.ndarray]]]) -> np.ndarray:
        rows: list[np.ndarray] = []
        for t, frags in tqdm(items, desc=f"histogram {split}", disable=not progress, leave=False):
            rows.extend(color_histogram_embedding(c) for c in cached_sequences(t, frags, crops))
        return np.stack(rows)

    return cached_fragment_features(
        data,
        split,
        "color_histogram",
        fragment,
        compute,
        cache_dir,
        cache_extra=HISTOGRAM_CROP.to_json(),
        progress=progress,
    )


def npv_on_diminutive(
    test: LabelledFragments,
    polyp_metadata: Mapping[str, Mapping[str, Any]],
    polyps: Sequence[str],
    y_pred: Sequence[int],
) -> dict[str, Any]:
    """NPV for adenoma restricted to diminutive (≤ 5 mm) test polyps.

    NPV = TN / (TN + FN), negative = predicted non-adenoma; the polyps are those
    with a known histology and a known size ≤ 5 mm. ``value`` is ``None`` with a
    ``reason`` when no such polyp is predicted non-adenoma.
    """
    y_true, y_hat = [], []
    for polyp, pred in zip(polyps, y_pred, strict=True):
        if task_label("size", polyp_metadata[polyp]) == 1:
            y_true.append(test.polyp_labels[polyp])
            y_hat.append(int(pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(y_true, y_hat, strict=True))
    fn = sum(t == 1 and p == 0 for t, p in zip(y_true, y_hat, strict=True))
    out: dict[str, Any] = {
        "n_diminutive_polyps": len(y_true),
        "n_adenoma": int(sum(y_true)),
        "predicted_non_adenoma": tn + fn,
        "tn": tn,
        "fn": fn,
        "value": tn / (tn + fn) if tn + fn else None,
        "pivi_threshold": 0.90,
    }
    if tn + fn == 0:
        out["reason"] = (
            "undefined: no diminutive test polyp is predicted non-adenoma"
            if y_true
            else "undefined: no diminutive test polyp with a known histology"
        )
    return out


def _evaluate(
    task: str,
    test: LabelledFragments,
    polyp_metadata: Mapping[str, Mapping[str, Any]],
    p_before: np.ndarray,
    p_after: np.ndarray,
    temperature: float | None,
) -> dict[str, Any]:
    metrics = identity_metrics(p_after, test.labels, test.identities)
    metrics["ece_before"] = expected_calibration_error(p_before, test.labels)
    metrics["ece_after"] = expected_calibration_error(p_after, test.labels)
    metrics["temperature"] = temperature
    if task == "histology":
        npv = npv_on_diminutive(
            test, polyp_metadata, metrics["predictions"]["polyps"], metrics["predictions"]["y_pred"]
        )
        metrics["npv_diminutive_detail"] = npv
        metrics["npv_diminutive"] = npv["value"]
    return metrics


def _summary(per_seed: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [float(r[key]) for r in per_seed if r.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,  # population std (ddof=0)
            "n": len(values),
            "n_undefined": len(per_seed) - len(values),
        }
    return out


def save_confusion_png(task: str, rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Polyp-level confusion matrices, one panel per row, summed over the seeds."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = CLASSES[task]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.9), squeeze=False)
    try:
        for ax, row in zip(axes[0], rows, strict=True):
            m = np.zeros((2, 2), dtype=np.int64)
            for r in row["per_seed"]:
                m += np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]])
            ax.imshow(m, cmap="Blues", vmin=0)
            for i in range(2):
                for j in range(2):
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=11)
            ax.set_xticks([0, 1], [c.replace("_", " ") for c in classes], fontsize=7)
            ax.set_yticks(
                [0, 1], [c.replace("_", " ") for c in classes], fontsize=7, rotation=90, va="center"
            )
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
            ax.set_title(row["name"], fontsize=9)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def run(
    task: str,
    data: str | Path,
    models: Mapping[str, str | Path],
    seeds: Sequence[int],
    out: str | Path,
    head: str = "linear",
    epochs: int = 20,
    train_split: str = "train",
    test_split: str = "test",
    cache_dir: str | Path | None = None,
    crop_cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the probe benchmark for ``task`` and write ``out/results.json``, ``out/results.md``,
    ``out/confusion.png`` and ``out/reliability_{calibrated,uncalibrated}.png``.

    Returns:
        The results dict written to ``results.json``.
    """
    check_task(task)
    if not seeds:
        raise InvalidInputError("give at least one seed")
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_probe_cache()
    crop_cache = Path(crop_cache_dir) if crop_cache_dir is not None else cache.parent / "crops"
    t_start = time.perf_counter()

    sources: list[dict[str, Any]] = []
    layout = Layout()
    encoders = {name: layout_encoder(layout, path) for name, path in models.items()}
    hist_fragment = (
        next(iter(encoders.values())).fragment if encoders else DEFAULT_HISTOGRAM_FRAGMENT
    )
    sources.append(
        {
            "name": "color_histogram",
            "kind": "color_histogram",
            "train": histogram_fragment_features(
                data, train_split, hist_fragment, cache, crop_cache, progress
            ),
            "test": histogram_fragment_features(
                data, test_split, hist_fragment, cache, crop_cache, progress
            ),
            "encoder_version": "color_histogram",
        }
    )
    for name, encoder in encoders.items():
        t0 = time.perf_counter()
        sources.append(
            {
                "name": name,
                "kind": "encoder",
                "model": str(models[name]),
                "encoder_version": encoder.version,
                "train": encoder_fragment_features(
                    encoder, data, train_split, cache, crop_cache, progress=progress
                ),
                "test": encoder_fragment_features(
                    encoder, data, test_split, cache, crop_cache, progress=progress
                ),
                "embed_seconds": time.perf_counter() - t0,
            }
        )

    reference_train = label_fragments(sources[0]["train"], task)
    reference_test = label_fragments(sources[0]["test"], task)
    test_meta = sources[0]["test"].polyp_metadata
    majority: dict[str, Any] = {"name": "majority_class", "kind": "baseline", "per_seed": []}
    rows: list[dict[str, Any]] = [majority]
    for seed in seeds:
        train_ids, _ = split_polyps(reference_train.polyp_labels, seed)
        q = float(np.mean([reference_train.polyp_labels[p] for p in train_ids]))
        p_const = np.full(len(reference_test.labels), q)
        r = _evaluate(task, reference_test, test_meta, p_const, p_const, None)
        r.update(seed=seed, positive_fraction_probe_train=q)
        majority["per_seed"].append(r)

    data_summary: dict[str, Any] = {
        "train_split": train_split,
        "test_split": test_split,
        "train": {
            "label_balance": reference_train.balance(task),
            "excluded_unknown_label": {
                "polyps": reference_train.excluded_polyps,
                "fragments": reference_train.excluded_fragments,
            },
        },
        "test": {
            "label_balance": reference_test.balance(task),
            "excluded_unknown_label": {
                "polyps": reference_test.excluded_polyps,
                "fragments": reference_test.excluded_fragments,
            },
        },
        "probe_splits": {},
    }
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    for src in sources:
        row: dict[str, Any] = {k: v for k, v in src.items() if k not in ("train", "test")} | {
            "fragment": src["train"].fragment.to_dict(),
            "per_seed": [],
        }
        test = label_fragments(src["test"], task)
        curves[src["name"]] = {"before": [], "after": [], "labels": []}
        for seed in tqdm(seeds, desc=f"{task} probe on {src['name']}", disable=not progress):
            config = ProbeTrainConfig(head=head, epochs=epochs, seed=seed)
            fit = train_probe(task, src["train"], config, src["encoder_version"])
            logits = fit.probe.logits(test.features)
            p_before = sigmoid(logits)
            p_after = sigmoid(logits / fit.probe.temperature)
            r = _evaluate(
                task, test, src["test"].polyp_metadata, p_before, p_after, fit.probe.temperature
            )
            r.update(
                seed=seed,
                probe_version=fit.probe.version,
                temperature_at_bound=fit.report["temperature_at_bound"],
                val=fit.report["val"]
                | {
                    "identity_level": {
                        k: v
                        for k, v in fit.report["val"]["identity_level"].items()
                        if k != "undefined"
                    }
                },
                train_seconds=fit.report["train_seconds"],
            )
            row["per_seed"].append(r)
            data_summary["probe_splits"][str(seed)] = {
                "probe_train_polyps": fit.report["probe_train_polyps"],
                "probe_val_polyps": fit.report["probe_val_polyps"],
                "label_balance": fit.report["label_balance"],
            }
            curves[src["name"]]["before"].append(p_before)
            curves[src["name"]]["after"].append(p_after)
            curves[src["name"]]["labels"].append(test.labels)
        rows.append(row)

    metric_keys = [HEADLINE[task][0]] + [k for k, _ in COMMON]
    metric_keys += ["accuracy", "macro_f1", "ppv", "npv"]
    if task == "histology":
        metric_keys += [k for k, _ in HISTOLOGY_EXTRA]
    for row in rows:
        row["summary"] = _summary(row["per_seed"], list(dict.fromkeys(metric_keys)))

    title = f"{task} probes ({head}), {data.name}/{test_split}, seeds {list(seeds)}"
    pngs = {
        "confusion": str(
            save_confusion_png(task, rows, out / "confusion.png", title + " (summed)")
        ),
    }
    for name, key in (("reliability_calibrated", "after"), ("reliability_uncalibrated", "before")):
        pooled = {
            n: (np.concatenate(c[key]), np.concatenate(c["labels"])) for n, c in curves.items()
        }
        note = f"\ntest fragments pooled over seeds, {key} temperature scaling"
        pngs[name] = str(save_reliability_png(pooled, out / f"{name}.png", title + note))
    results = {
        "task": task,
        "classes": list(CLASSES[task]),
        "data": str(data),
        "seeds": list(seeds),
        "head": head,
        "epochs": epochs,
        "protocol": __doc__,
        "ece_definition": "sum_k n_k/N |fraction positive_k - mean P(positive)_k| over 15 "
        "equal-width bins of P(positive), test fragments",
        "std": "population standard deviation over seeds (ddof=0)",
        "data_summary": data_summary,
        "environment": environment(),
        "wall_seconds": time.perf_counter() - t_start,
        "rows": rows,
        "figures": pngs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(markdown(results) + "\n")
    return results


def _cell(stat: dict[str, Any] | None) -> str:
    if stat is None or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.3f}"
    if stat["n"] > 1:
        text += f" ± {stat['std']:.3f}"
    if stat.get("n_undefined"):
        text += f" ({stat['n_undefined']} undef.)"
    return text


def markdown(results: Mapping[str, Any]) -> str:
    """A Markdown table: mean ± std over seeds per row."""
    task = results["task"]
    columns = [HEADLINE[task], *COMMON] + (list(HISTOLOGY_EXTRA) if task == "histology" else [])
    lines = [
        "| row | " + " | ".join(h for _, h in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['name']} | "
            + " | ".join(_cell(row["summary"].get(k)) for k, _ in columns)
            + " |"
        )
    return "\n".join(lines)
