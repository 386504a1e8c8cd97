"""How good a probe's predictions are (docs/method.md#probes): the validation
metrics training stores with a probe, judged against a setting. numpy-free, serving layer.

A probe is ``reliable`` when its validation AUROC is at least ``min_auroc`` (default
:data:`RELIABLE_AUROC`); ``unreliable`` below; ``unknown`` without a measured AUROC.
Only a reliable probe's prediction may be shown as a decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["QUALITY", "RELIABLE_AUROC", "ProbeQuality", "probe_quality"]

# a probe is reliable when its validation AUROC is at least this (a setting)
RELIABLE_AUROC = 0.7
QUALITY = ("reliable", "unreliable", "unknown")


@dataclass(frozen=True)
class ProbeQuality:
    """What a probe's validation says about its predictions.

    Attributes:
        status: ``reliable`` (AUROC ≥ ``min_auroc``), ``unreliable`` or ``unknown``
            (no measured AUROC).
        reliable: ``status == "reliable"``; only then may a prediction be shown as a
            decision.
        min_auroc: the setting it was judged against.
        auroc / ece / npv_adenoma_diminutive: the validation metrics (``None`` when
            not measured; the NPV for histology only).
        source: where they were measured (e.g. ``"val split, 15 polyps"``).
        reason: one sentence for the user.
    """

    status: str
    reliable: bool
    min_auroc: float
    auroc: float | None = None
    ece: float | None = None
    npv_adenoma_diminutive: float | None = None
    source: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def probe_quality(
    task: str, metrics: Mapping[str, Any] | None, min_auroc: float = RELIABLE_AUROC
) -> ProbeQuality:
    """The :class:`ProbeQuality` of a probe's stored ``metrics``: ``metrics["validation"]``
    (this release), else the ``val_identity_auroc`` / ``val_ece_after`` that older
    probes recorded on their calibration polyps, else ``unknown``."""
    metrics = metrics or {}
    validation = metrics.get("validation")
    if isinstance(validation, Mapping):
        auroc, ece = _number(validation.get("auroc")), _number(validation.get("ece"))
        npv = _number(validation.get("npv_adenoma_diminutive"))
        source = str(validation.get("source") or "validation")
    else:
        auroc, ece = (
            _number(metrics.get("val_identity_auroc")),
            _number(metrics.get("val_ece_after")),
        )
        npv, source = None, "the probe's calibration polyps (an older probe)"
    if auroc is None:
        return ProbeQuality(
            "unknown",
            False,
            min_auroc,
            None,
            ece,
            npv,
            None,
            f"the {task} probe has no measured validation AUROC (trained by an older "
            f"release, or too few polyps of a class): its predictions are not decisions",
        )
    if auroc >= min_auroc:
        reason = f"validation AUROC {auroc:.2f} ≥ {min_auroc:g} ({source})"
        return ProbeQuality("reliable", True, min_auroc, auroc, ece, npv, source, reason)
    reason = (
        f"validation AUROC {auroc:.2f} < {min_auroc:g} ({source}): the {task} probe does "
        f"not separate its classes well enough for its predictions to be decisions"
    )
    return ProbeQuality("unreliable", False, min_auroc, auroc, ece, npv, source, reason)
