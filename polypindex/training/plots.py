"""The figures of the evaluation and probe protocols (matplotlib, Agg backend).

matplotlib is an optional dependency (the ``plots`` extra, part of ``train`` and
``dev``): only this module and the benchmarks import it, through :func:`pyplot`, never
the serving layers (``model``, ``indexer``, ``service``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.core.errors import ConfigError
from polypindex.model.scoring.evaluation import ReidResult
from polypindex.model.scoring.metrics import (
    CALIBRATION_BINS,
    expected_calibration_error,
    reliability_bins,
)

PLOTS_HINT = "pip install 'polypindex[plots]'"


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend.

    Raises:
        ConfigError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            f"drawing figures needs matplotlib, which is not installed: {PLOTS_HINT}"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """A one-panel figure of ``size`` inches: the block draws on the yielded axes; the
    figure is then laid out and saved to ``path`` at 120 dpi, and always closed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def save_curves_png(result: ReidResult, path_prefix: Path, title: str) -> list[Path]:
    """Write the ROC and PR curves as ``{path_prefix}_roc.png`` and ``{path_prefix}_pr.png``.

    Args:
        result: a :class:`ReidResult`.
        path_prefix: output path without suffix; its folder is created.
        title: shown in both plot titles.

    Returns:
        The two written paths, ROC first.
    """
    path_prefix = Path(path_prefix)
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    roc_path = path_prefix.with_name(path_prefix.name + "_roc.png")
    pr_path = path_prefix.with_name(path_prefix.name + "_pr.png")

    with figure(roc_path, (4.5, 4.5)) as ax:
        ax.plot(result.fpr, result.tpr, lw=1.5, label=f"AUROC {result.auroc:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
        ax.set(
            xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01)
        )
        ax.set_title(f"{title}: ROC")
        ax.legend(loc="lower right")

    prevalence = result.n_positive_pairs / result.n_pairs
    with figure(pr_path, (4.5, 4.5)) as ax:
        ax.step(
            result.recall, result.precision, where="post", lw=1.5, label=f"AP {result.aupr:.3f}"
        )
        ax.axhline(prevalence, ls="--", lw=0.8, color="grey", label=f"prevalence {prevalence:.3f}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(f"{title}: precision-recall")
        ax.legend(loc="upper right")
    return [roc_path, pr_path]


def save_reliability_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    n_bins: int = CALIBRATION_BINS,
) -> Path:
    """Reliability diagram: observed fraction of positives vs mean predicted P(positive).

    Args:
        curves: ``{legend label: (probabilities (N,), labels (N,))}``; the ECE
            is added to each label.
        path: the PNG to write (its folder is created).
        title: the plot title.
        n_bins: equal-width bins.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with figure(path, (4.8, 4.8)) as ax:
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
        for label, (probs, ys) in curves.items():
            bins = reliability_bins(probs, ys, n_bins)
            used = bins["count"] > 0
            ece = expected_calibration_error(probs, ys, n_bins)
            ax.plot(
                bins["confidence"][used],
                bins["frequency"][used],
                marker="o",
                lw=1.2,
                label=f"{label} (ECE {ece:.3f}, n={len(np.asarray(probs).reshape(-1))})",
            )
        ax.set(
            xlabel="mean predicted P(positive)",
            ylabel="observed fraction positive",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    return path


def save_noise_sweep_png(
    levels: list[tuple[float, dict[str, list[float]], float | None]],
    path: Path,
    title: str,
    ylabel: str = "test mAP",
) -> Path:
    """Test mAP against the bags' wrong-member rate, one line per loss (the noise sweep,
    :mod:`benchmarks.noise_sweep`).

    Args:
        levels: per noise level ``(wrong-member rate, {loss: per-seed mAPs}, colour-histogram
            mAP or None)``.
        path: the PNG to write (its folder is created).
        title: the plot title.
        ylabel: the y-axis label (another split's mAP, say).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = sorted(levels, key=lambda lv: lv[0])
    rates = np.array([lv[0] for lv in order]) * 100.0
    with figure(path, (5.5, 4.2)) as ax:
        for loss in order[0][1] if order else {}:
            values = [np.asarray(lv[1][loss], dtype=np.float64) for lv in order]
            mean = np.array([v.mean() for v in values])
            std = np.array([v.std() for v in values])
            ax.errorbar(rates, mean, yerr=std, marker="o", capsize=3, label=f"{loss} (mean ± std)")
            for rate, v in zip(rates, values, strict=True):
                ax.scatter(np.full(v.size, rate), v, s=8, alpha=0.4)
        hist = [(r, lv[2]) for r, lv in zip(rates, order, strict=True) if lv[2] is not None]
        if hist:
            ax.plot(*zip(*hist, strict=True), ls="--", color="grey", label="colour histogram")
        ax.set(xlabel="bag members of another polyp (%)", ylabel=ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path


def save_fragmentation_png(
    curves: dict[str, list[dict[str, Any]]], path: Path, max_merge_fp: float = 0.05
) -> Path:
    """Polyp counting: fragmentation rate vs merge false-positive rate as each grouping
    method's cut (or gap) varies (``benchmarks/counting.py``).

    Args:
        curves: ``{legend label: [{"merge_fp_rate", "fragmentation", ...}, ...]}``; a
            one-point curve is drawn as a marker.
        path: the PNG to write (its folder is created).
        max_merge_fp: drawn as the operating limit.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with figure(path, (6.4, 4.8)) as ax:
        for label, points in curves.items():
            pts = sorted(points, key=lambda c: (c["merge_fp_rate"], -c["fragmentation"]))
            x = [c["merge_fp_rate"] for c in pts]
            y = [c["fragmentation"] for c in pts]
            if len(pts) == 1:
                ax.plot(x, y, marker="s", ls="none", label=label)
            else:
                ax.plot(x, y, marker=".", lw=1.0, ms=3, label=label)
        ax.axvline(
            max_merge_fp, ls="--", lw=0.8, color="grey", label=f"{max_merge_fp:.0%} merge FP"
        )
        ax.set(
            xlabel="merge false-positive rate (different-polyp pairs merged)",
            ylabel="fragmentation (extra entities per polyp)",
            xlim=(-0.01, 1.0),
        )
        ax.set_title("Polyps per procedure: fragmentation vs wrong merges", fontsize=9)
        ax.legend(loc="upper right", fontsize=6)
    return path
