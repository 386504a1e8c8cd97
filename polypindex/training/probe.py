"""Training size and histology probes on a frozen ONNX encoder (docs/method.md#probes).

Pipeline: COCO split → tracklets → fragments (the encoder's own fragment rule,
read from its ONNX metadata) → :class:`model.runtime.onnx.OnnxEncoder` embeddings
(cached on disk per encoder version + dataset split) → labels per polyp
(:func:`model.scoring.probe.task_label`; unknown labels excluded and counted) → a
70/30 split **by polyp** (stratified by label, deterministic per seed) → a
linear or MLP probe (torch; AdamW, one-cycle LR, a fixed number of epochs, the
last epoch kept) → temperature scaling fitted on the validation polyps → a
:class:`model.scoring.probe.Probe` that serves with numpy only, carrying its
validation metrics (``metrics["validation"]``: polyp-level AUROC, fragment ECE and, for
histology, the NPV for adenoma on diminutive polyps; :mod:`model.scoring.probe_quality`
judges them). They are measured on the dataset's ``val`` split when it has labelled
polyps of both classes (held out from the head and the temperature), else on the
probe's own calibration polyps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.model.data.config import FragmentConfig
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.metrics import (
    binary_classification_metrics,
    expected_calibration_error,
)
from polypindex.model.scoring.probe import (
    CLASSES,
    Probe,
    check_task,
    probe_path,
    sigmoid,
    task_label,
    vote_by_identity,
)
from polypindex.training.plots import save_reliability_png
from polypindex.training.probe_data import (
    FragmentSet,
    LabelledFragments,
    encoder_fragment_features,
    label_fragments,
    split_polyps,
)
from polypindex.training.probe_head import (
    TEMPERATURE_BOUNDS,
    ProbeHead,
    ProbeTrainConfig,
    binary_nll,
    fit_head,
    fit_temperature,
)

__all__ = [
    "ProbeFit",
    "default_probe_cache",
    "identity_metrics",
    "npv_on_diminutive",
    "train_probe",
    "train_probe_on_encoder",
    "validation_metrics",
]

# --------------------------------------------------------------------------- train + calibrate


@dataclass
class ProbeFit:
    """A trained, calibrated probe and what was measured while fitting it.

    Attributes:
        probe: the numpy probe (weights, temperature, metadata).
        head: the torch module (for parity checks).
        report: JSON-ready summary (split sizes, balance, exclusions, history,
            validation metrics, ECE before/after calibration).
        val_probabilities: ``{"uncalibrated": (M,), "calibrated": (M,)}`` on the
            validation fragments.
        val_labels: (M,) validation fragment labels.
    """

    probe: Probe
    head: ProbeHead
    report: dict[str, Any]
    val_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def identity_metrics(
    probabilities: np.ndarray, labels: np.ndarray, identities: Sequence[str]
) -> dict[str, Any]:
    """Polyp-level metrics: majority vote per polyp, AUROC on the mean probability."""
    ids, voted, mean_p = vote_by_identity(probabilities, identities)
    truth: dict[str, int] = {}
    for i, y in zip(identities, np.asarray(labels).tolist(), strict=True):
        truth.setdefault(i, int(y))
    y_true = np.asarray([truth[str(i)] for i in ids], dtype=np.int64)
    out = binary_classification_metrics(y_true, voted, mean_p)
    out["predictions"] = {
        "polyps": [str(i) for i in ids],
        "y_true": y_true.tolist(),
        "y_pred": voted.tolist(),
        "probability": mean_p.tolist(),
    }
    return out


def npv_on_diminutive(
    polyps: Sequence[str],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    polyp_metadata: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """NPV for adenoma on the diminutive (≤ 5 mm) polyps with a known histology:
    TN / (TN + FN), negative = predicted non-adenoma. ``value`` is ``None`` (with a
    ``reason``) when no such polyp is predicted non-adenoma."""
    pairs = [
        (int(t), int(p))
        for polyp, t, p in zip(polyps, y_true, y_pred, strict=True)
        if task_label("size", polyp_metadata.get(polyp, {})) == 1
    ]
    tn = sum(t == 0 and p == 0 for t, p in pairs)
    fn = sum(t == 1 and p == 0 for t, p in pairs)
    out: dict[str, Any] = {
        "n_diminutive_polyps": len(pairs),
        "n_adenoma": sum(t for t, _ in pairs),
        "tn": tn,
        "fn": fn,
        "value": tn / (tn + fn) if tn + fn else None,
    }
    if tn + fn == 0:
        out["reason"] = (
            "undefined: no diminutive polyp is predicted non-adenoma"
            if pairs
            else "undefined: no diminutive polyp with a known histology"
        )
    return out


def validation_metrics(
    task: str,
    probabilities: np.ndarray,
    labelled: LabelledFragments,
    polyp_metadata: Mapping[str, Mapping[str, Any]],
    source: str,
) -> dict[str, Any]:
    """What a probe stores as ``metrics["validation"]``: polyp-level AUROC (mean
    calibrated probability), accuracy and macro F1 (majority vote), the fragment ECE
    and, for histology, the NPV for adenoma on diminutive polyps."""
    metrics = identity_metrics(probabilities, labelled.labels, labelled.identities)
    predictions = metrics.pop("predictions")
    out: dict[str, Any] = {
        "source": source,
        "n_polyps": len(predictions["polyps"]),
        "auroc": metrics.get("auroc"),
        "ece": expected_calibration_error(probabilities, labelled.labels),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
    }
    if task == "histology":
        npv = npv_on_diminutive(
            predictions["polyps"], predictions["y_true"], predictions["y_pred"], polyp_metadata
        )
        out["npv_adenoma_diminutive"] = npv["value"]
        out["npv_adenoma_diminutive_detail"] = npv
    return out


def train_probe(
    task: str,
    fragments: FragmentSet,
    config: ProbeTrainConfig,
    encoder_version: str,
    training_info: dict[str, Any] | None = None,
    evaluation: FragmentSet | None = None,
) -> ProbeFit:
    """Train and calibrate a probe on one split's fragments.

    The labelled polyps are split 70/30 (``config.val_fraction``) by polyp with
    :func:`split_polyps`; the head is trained on the 70 % (fixed epochs, last
    epoch kept), the temperature fitted on the 30 %'s fragment logits.

    Args:
        task: ``"size"`` or ``"histology"``.
        fragments: the split's fragment features.
        config: training settings.
        encoder_version: stored with the probe (``fragments.source`` for encoders).
        training_info: more JSON-ready facts for the probe's ``training`` metadata.
        evaluation: another split's fragments (held out from head and temperature)
            to measure the validation metrics on; without one, or when it lacks
            labelled polyps of a class, the probe's calibration polyps.

    Raises:
        InvalidInputError: fewer than two labelled polyps per class.
    """
    check_task(task)
    labelled = label_fragments(fragments, task)
    balance = labelled.balance(task)
    if min(balance["polyps"].values()) < 2:
        raise InvalidInputError(
            f"{task} probe needs at least 2 labelled polyps per class in split "
            f"{fragments.split!r}, got {balance['polyps']} "
            f"({labelled.excluded_polyps} polyp(s) without a known label excluded)"
        )
    train_ids, val_ids = split_polyps(labelled.polyp_labels, config.seed, config.val_fraction)
    train = labelled.subset(set(train_ids))
    val = labelled.subset(set(val_ids))
    t0 = time.perf_counter()
    head, history = fit_head(train.features, train.labels, config)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        val_logits = head(torch.from_numpy(val.features)).double().numpy()
    temperature = fit_temperature(val_logits, val.labels)
    p_before = sigmoid(val_logits)
    p_after = sigmoid(val_logits / temperature)
    val_metrics = identity_metrics(p_after, val.labels, val.identities)
    val_metrics.pop("predictions")
    validation = validation_metrics(
        task,
        p_after,
        val,
        fragments.polyp_metadata,
        f"the probe's calibration polyps of {fragments.split}, {len(val.polyp_labels)} polyps",
    )
    if evaluation is not None:
        held_out = label_fragments(evaluation, task)
        counts = held_out.balance(task)["polyps"]
        if min(counts.values()) >= 1:
            with torch.no_grad():
                logits = head(torch.from_numpy(held_out.features)).double().numpy()
            validation = validation_metrics(
                task,
                sigmoid(logits / temperature),
                held_out,
                evaluation.polyp_metadata,
                f"{evaluation.split} split, {len(held_out.polyp_labels)} polyps",
            )
    report: dict[str, Any] = {
        "task": task,
        "classes": list(CLASSES[task]),
        "split": fragments.split,
        "fragment": fragments.fragment.to_dict(),
        "config": {**asdict(config), "peak_lr": config.peak_lr},
        "excluded_unknown_label": {
            "polyps": labelled.excluded_polyps,
            "fragments": labelled.excluded_fragments,
        },
        "label_balance": {
            "all": balance,
            "probe_train": train.balance(task),
            "probe_val": val.balance(task),
        },
        "probe_train_polyps": train_ids,
        "probe_val_polyps": val_ids,
        "train_seconds": seconds,
        "train_loss_per_epoch": history,
        "temperature": temperature,
        "temperature_at_bound": bool(
            math.isclose(temperature, TEMPERATURE_BOUNDS[0])
            or math.isclose(temperature, TEMPERATURE_BOUNDS[1])
        ),
        "validation": validation,
        "val": {
            "nll_before": binary_nll(val_logits, val.labels, 1.0),
            "nll_after": binary_nll(val_logits, val.labels, temperature),
            "ece_before": expected_calibration_error(p_before, val.labels),
            "ece_after": expected_calibration_error(p_after, val.labels),
            "ece_definition": "15 equal-width bins of P(positive), fragment level",
            "identity_level": val_metrics,
        },
    }
    metadata = {
        "task": task,
        "classes": list(CLASSES[task]),
        "head": config.head,
        "temperature": temperature,
        "encoder_version": encoder_version,
        "dim": fragments.dim,
        "training": {
            "split": fragments.split,
            "fragment": fragments.fragment.to_dict(),
            "seed": config.seed,
            "epochs": config.epochs,
            "peak_lr": config.peak_lr,
            "weight_decay": config.weight_decay,
            "batch_size": config.batch_size,
            "label_balance": report["label_balance"],
            "excluded_unknown_label": report["excluded_unknown_label"],
            **(training_info or {}),
        },
        "metrics": {
            "val_ece_before": report["val"]["ece_before"],
            "val_ece_after": report["val"]["ece_after"],
            "val_identity_accuracy": val_metrics["accuracy"],
            "val_identity_macro_f1": val_metrics["macro_f1"],
            "val_identity_auroc": val_metrics.get("auroc"),
            "validation": validation,
        },
    }
    probe = Probe(head.export_arrays(), metadata)
    report["probe_version"] = probe.version
    return ProbeFit(
        probe=probe,
        head=head,
        report=report,
        val_probabilities={"uncalibrated": p_before, "calibrated": p_after},
        val_labels=val.labels,
    )


def default_probe_cache() -> Path:
    """``$POLYPINDEX_HOME/cache/probe_embeddings`` (``var/`` by default)."""
    from polypindex.model.core.layout import Layout

    return Layout().probe_cache


def train_probe_on_encoder(
    task: str,
    data: str | Path,
    model: str | Path,
    out: str | Path | None = None,
    config: ProbeTrainConfig | None = None,
    split: str = "train",
    cache_dir: str | Path | None = None,
    crop_cache_dir: str | Path | None = None,
    fragment_length: int | None = None,
    progress: bool = True,
    eval_split: str | None = "val",
) -> tuple[ProbeFit, Path]:
    """``polypindex probe train``: embed ``split`` with the ONNX encoder, train, calibrate, save.

    Writes the probe to ``out`` (default ``<model dir>/probes/<task>.npz``),
    its report to ``<out stem>.report.json`` and the validation reliability
    diagram (before/after temperature scaling) to ``<out stem>_reliability.png``.

    Args:
        fragment_length: override the encoder's fragment length (default: the
            encoder's own rule, what the service embeds).
        eval_split: the split the stored validation metrics are measured on, when
            ``data`` has it (``None``: the probe's calibration polyps).

    Returns:
        The fit and the probe path.
    """
    check_task(task)
    config = config or ProbeTrainConfig()
    model = Path(model)
    encoder = layout_encoder(Layout(), model)  # the runtime the service uses
    cache_dir = default_probe_cache() if cache_dir is None else cache_dir
    crop_cache_dir = crop_cache_dir or Path(cache_dir).parent / "crops"
    fragment = encoder.fragment
    if fragment_length is not None:
        fragment = FragmentConfig.from_dict(
            {**fragment.to_dict(), "fragment_length": fragment_length}
        )
    fragments = encoder_fragment_features(
        encoder, data, split, cache_dir, crop_cache_dir, fragment=fragment, progress=progress
    )
    evaluation = None
    held_out = Path(data) / "annotations" / f"instances_{eval_split}.json"
    if eval_split is not None and eval_split != split and held_out.is_file():
        evaluation = encoder_fragment_features(
            encoder,
            data,
            eval_split,
            cache_dir,
            crop_cache_dir,
            fragment=fragment,
            progress=progress,
        )
    fit = train_probe(
        task,
        fragments,
        config,
        encoder.version,
        training_info={"data": str(data), "encoder_path": str(model)},
        evaluation=evaluation,
    )
    path = Path(out) if out is not None else probe_path(model.parent / "probes", task)
    fit.probe.save(path)
    stem = path.with_suffix("")
    (stem.parent / f"{stem.name}.report.json").write_text(
        json.dumps(fit.report, indent=2, default=float)
    )
    save_reliability_png(
        {
            "uncalibrated": (fit.val_probabilities["uncalibrated"], fit.val_labels),
            f"temperature {fit.probe.temperature:.2f}": (
                fit.val_probabilities["calibrated"],
                fit.val_labels,
            ),
        },
        stem.parent / f"{stem.name}_reliability.png",
        title=f"{task} probe ({config.head}) on {encoder.version}: validation fragments",
    )
    return fit, path
