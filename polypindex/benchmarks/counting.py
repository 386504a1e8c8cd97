"""``polypindex bench counting``: polyps per procedure (docs/grouping.md#evaluation).

On a split with true identities, each procedure's tracklets are grouped into
entities (:mod:`model.scoring.grouping`) and compared with the truth:

- **merge false-positive rate**: of the pairs of tracklets of *different* polyps in
  one procedure, the fraction put in one entity (pooled over the split's procedures);
- **fragmentation rate**: extra entities per true polyp, ``Σ_polyps (entities its
  tracklets fall into − 1) / polyps`` (pooled);
- **count error**: predicted − true number of polyps, per procedure (mean and mean |·|);
- **ARI**: adjusted Rand index of the entities vs the polyps, per procedure (mean;
  1 for a procedure whose truth and prediction are both one cluster, or both all
  singletons, matched exactly).

Every method is swept over its parameter (the probability cut; for the time-gap
rule the largest gap in frames), which draws fragmentation vs merge-FP. Two
operating points per method: **at < 5 % merge FP on the test curve** (the lowest
fragmentation among the test points below 5 %), and **chosen on the fit split**
(the parameter with the lowest fit-split fragmentation below 5 % merge FP, applied
to the test split): the count error and ARI reported are those of the latter.

Rows: each grouping method on each trained encoder (mean ± std over encoders, e.g.
seeds), the same on the untrained encoder(s), and the non-learned baselines: one
entity per tracklet and the time-gap rule. The same-polyp probability of every
encoder is its calibration fitted on the fit split's pairs (:func:`fit_calibration`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import Tracklet
from polypindex.model.scoring import grouping
from polypindex.model.scoring.calibration import calibration_pairs, fit_calibration, log_loss
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.reid import reid_score

MAX_MERGE_FP = 0.05
# cut candidates: a logit-spaced grid (calibrated within-procedure probabilities crowd
# near 0 or 1) plus the split's own pair probabilities (capped by quantiles)
GRID = tuple(float(v) for v in 1.0 / (1.0 + np.exp(-np.linspace(-9.0, 9.0, 73))))
MAX_CUTS = 150
GAPS = (0, 5, 10, 20, 40, 80, 160, 320, 640, 1280)

__all__ = ["adjusted_rand_index", "evaluate_labels", "run_counting"]


def adjusted_rand_index(truth: Sequence[Any], pred: Sequence[Any]) -> float:
    """Hubert–Arabie adjusted Rand index of two labellings of the same items (1.0 when
    both are the same trivial partition, where the index is undefined)."""
    _, t = np.unique(np.asarray([str(x) for x in truth]), return_inverse=True)
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)

    def pairs(x: np.ndarray) -> float:
        return float(np.sum(x * (x - 1) / 2))

    index = pairs(table)
    a, b = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    n = pairs(np.asarray([len(t)]))
    expected = a * b / n if n > 0 else 0.0
    maximum = (a + b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def evaluate_labels(procedures: Sequence[tuple[list[str], np.ndarray]]) -> dict[str, Any]:
    """The counting metrics of predicted entities (module docstring).

    Args:
        procedures: per procedure, ``(true identity per tracklet, predicted entity per tracklet)``.
    """
    diff_pairs = merged_diff = 0
    extra = polyps = 0
    count_errors, aris = [], []
    for truth, pred in procedures:
        t = np.asarray(truth)
        p = np.asarray(pred)
        iu, ju = np.triu_indices(len(t), k=1)
        different = t[iu] != t[ju]
        diff_pairs += int(different.sum())
        merged_diff += int(np.sum(different & (p[iu] == p[ju])))
        for ident in np.unique(t):
            extra += len(np.unique(p[t == ident])) - 1
            polyps += 1
        count_errors.append(len(np.unique(p)) - len(np.unique(t)))
        aris.append(adjusted_rand_index(t.tolist(), p.tolist()))
    return {
        "merge_fp_rate": merged_diff / diff_pairs if diff_pairs else 0.0,
        "fragmentation": extra / polyps if polyps else 0.0,
        "count_error_mean": float(np.mean(count_errors)),
        "count_error_abs_mean": float(np.mean(np.abs(count_errors))),
        "count_errors": [int(c) for c in count_errors],
        "ari_mean": float(np.mean(aris)),
        "different_pairs": diff_pairs,
        "polyps": polyps,
    }


class _Split:
    """One split's procedures: tracklets, spans, truths, cannot-link matrices."""

    def __init__(self, data: Path, split: str) -> None:
        tracklets = load_coco_split(data, split).tracklets(TrackletConfig())
        if len(tracklets) < 2:
            raise InvalidInputError(f"{data} split {split!r} has {len(tracklets)} tracklet(s)")
        self.tracklets = tracklets
        self.by_procedure: dict[str, list[int]] = {}
        for i, t in enumerate(tracklets):
            self.by_procedure.setdefault(t.sequence_id, []).append(i)
        self.spans = {
            uid: [_span(k, tracklets[i]) for k, i in enumerate(rows)]
            for uid, rows in self.by_procedure.items()
        }
        self.truth = {
            uid: [str(tracklets[i].identity_id) for i in rows]
            for uid, rows in self.by_procedure.items()
        }
        self.forbid = {uid: grouping.cannot_link_matrix(spans) for uid, spans in self.spans.items()}

    def labels(self, grouper: Callable[[str], np.ndarray]) -> list[tuple[list[str], np.ndarray]]:
        out = []
        for uid in self.by_procedure:
            labels = grouper(uid)
            if grouping.violations(labels, self.forbid[uid]):
                raise AssertionError(f"{uid}: the temporal constraint was violated")
            out.append((self.truth[uid], labels))
        return out


def _span(k: int, t: Tracklet) -> grouping.TrackletSpan:
    return grouping.TrackletSpan(k, t.frame_ids, t.boxes)


def _curve(
    split: _Split, params: Sequence[float], grouper: Callable[[str, float], np.ndarray]
) -> list[dict[str, Any]]:
    out = []
    for v in params:

        def at(uid: str, v: float = v) -> np.ndarray:
            return grouper(uid, v)

        out.append(_slim({"param": float(v), **evaluate_labels(split.labels(at))}))
    return out


def _slim(point: dict[str, Any]) -> dict[str, Any]:
    """A curve point as stored: the operating-point metrics, rounded."""
    return {k: (None if v is None else round(float(v), 5)) for k, v in _point(point).items()}


def _best_below(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point of lowest fragmentation with merge FP < 5 % (ties: the lower merge FP,
    then the lower parameter)."""
    ok = [c for c in curve if c["merge_fp_rate"] < MAX_MERGE_FP]
    if not ok:
        return None
    return min(ok, key=lambda c: (c["fragmentation"], c["merge_fp_rate"], c["param"]))


def _summaries(
    fit_curve: list[dict[str, Any]],
    test_curve: list[dict[str, Any]],
    at_test: Callable[[float], dict[str, Any]],
) -> dict[str, Any]:
    """The two operating points: the best test point below 5 % merge FP, and the test
    metrics at the parameter chosen on the fit split (``at_test(param)``)."""
    chosen = _best_below(fit_curve)
    at_chosen = {"param": chosen["param"], **at_test(chosen["param"])} if chosen else None
    return {
        "at_5pct_test": _point(_best_below(test_curve)),
        "chosen_on_fit": {**_point(at_chosen), "param_chosen": chosen and chosen["param"]},
    }


def _point(c: dict[str, Any] | None) -> dict[str, Any]:
    keys: tuple[str, ...] = ("param", "merge_fp_rate", "fragmentation", "count_error_mean")
    keys += ("count_error_abs_mean", "ari_mean")
    return {k: (None if c is None else c[k]) for k in keys}


def _probabilities(split: _Split, emb: np.ndarray, calibration: Any) -> dict[str, np.ndarray]:
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out = {}
    for uid, rows in split.by_procedure.items():
        cos = np.clip(e[rows] @ e[rows].T, -1.0, 1.0)
        out[uid] = calibration.probability(cos)
    return out


def _cuts(probs: dict[str, np.ndarray]) -> list[float]:
    values = [p[np.triu_indices(p.shape[0], k=1)] for p in probs.values()]
    pairs = np.unique(np.round(np.concatenate(values), 6)) if values else np.zeros(0)
    if pairs.size > MAX_CUTS:
        pairs = np.unique(np.quantile(pairs, np.linspace(0.0, 1.0, MAX_CUTS)))
    return sorted({*GRID, *pairs.tolist(), 1.0})


def _encoder_rows(
    path: Path, fit: _Split, test: _Split, cache_dir: Path, progress: bool
) -> dict[str, Any]:
    from polypindex.benchmarks.protocols import embed_tracklets_onnx
    from polypindex.model.core.layout import Layout
    from polypindex.model.runtime.loader import layout_encoder

    encoder = layout_encoder(Layout(), path)
    fit_emb = embed_tracklets_onnx(encoder, fit.tracklets, cache_dir, progress=progress)
    test_emb = embed_tracklets_onnx(encoder, test.tracklets, cache_dir, progress=progress)
    cosines, same = calibration_pairs(fit_emb, [t.identity_id for t in fit.tracklets])
    calibration = fit_calibration(cosines, same)
    test_cos, test_same = calibration_pairs(test_emb, [t.identity_id for t in test.tracklets])
    held_out = {
        "n_pairs": int(test_same.size),
        "n_positive": int(test_same.sum()),
        "ece_before": expected_calibration_error(reid_score(test_cos), test_same.astype(int)),
        "ece_after": expected_calibration_error(
            calibration.probability(test_cos), test_same.astype(int)
        ),
        "log_loss_before": log_loss(reid_score(test_cos), test_same),
        "log_loss_after": log_loss(calibration.probability(test_cos), test_same),
    }
    probs = {"fit": _probabilities(fit, fit_emb, calibration)}
    probs["test"] = _probabilities(test, test_emb, calibration)
    methods: dict[str, Any] = {}
    for method in grouping.METHODS:

        def grouper(split: _Split, p: dict[str, np.ndarray], m: str = method) -> Any:
            return lambda uid, cut: grouping.group(
                split.spans[uid], p[uid], m, cut, split.forbid[uid]
            )

        fit_g, test_g = grouper(fit, probs["fit"]), grouper(test, probs["test"])
        fit_curve = _curve(fit, _cuts(probs["fit"]), fit_g)
        test_curve = _curve(test, _cuts(probs["test"]), test_g)

        def at_test(cut: float, g: Any = test_g) -> dict[str, Any]:
            return evaluate_labels(test.labels(lambda uid: g(uid, cut)))

        methods[method] = {**_summaries(fit_curve, test_curve, at_test), "curve": test_curve}
    return {
        "model": str(path),
        "encoder_version": encoder.version,
        "calibration": {
            "method": calibration.method,
            "threshold": calibration.threshold,
            "fit": calibration.metrics,
            "test": held_out,
        },
        "_reliability": {
            "sigmoid(cosine)": (reid_score(test_cos), test_same.astype(int)),
            f"calibrated ({calibration.method})": (
                calibration.probability(test_cos),
                test_same.astype(int),
            ),
        },
        "methods": methods,
    }


def _baselines(fit: _Split, test: _Split) -> dict[str, Any]:
    single = evaluate_labels(test.labels(lambda uid: grouping.one_per_tracklet(test.spans[uid])))

    def by_gap(split: _Split) -> Callable[[str, float], np.ndarray]:
        return lambda uid, gap: grouping.time_gap_groups(split.spans[uid], gap, split.forbid[uid])

    curves = {
        name: _curve(split, GAPS, by_gap(split)) for name, split in (("fit", fit), ("test", test))
    }
    one = {**_point({**single, "param": None}), "param_chosen": None}
    return {
        "one_per_tracklet": {"at_5pct_test": one, "chosen_on_fit": one, "curve": [single]},
        "time_gap": {
            **_summaries(
                curves["fit"],
                curves["test"],
                lambda gap: evaluate_labels(
                    test.labels(
                        lambda uid: grouping.time_gap_groups(test.spans[uid], gap, test.forbid[uid])
                    )
                ),
            ),
            "curve": curves["test"],
        },
    }


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}


def _aggregate(per_encoder: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in grouping.METHODS:
        out[method] = {
            point: {
                k: _mean_std([e["methods"][method][point][k] for e in per_encoder])
                for k in _point(None)
            }
            for point in ("at_5pct_test", "chosen_on_fit")
        }
    return out


def _fmt(cell: dict[str, Any] | float | None) -> str:
    if isinstance(cell, dict):
        if cell["mean"] is None:
            return "—"
        return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"
    return "—" if cell is None else f"{cell:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """The Markdown table of docs/results.md#polyps-per-procedure."""
    head = (
        "| row | frag. @ <5 % merge FP (test curve) | cut / gap chosen on fit split | "
        "merge FP | fragmentation | count error | abs count error | ARI |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for group_name in ("trained", "untrained"):
        agg = result.get(f"{group_name}_aggregate") or {}
        n = len(result.get(group_name) or [])
        for method in grouping.METHODS:
            if method not in agg:
                continue
            a, c = agg[method]["at_5pct_test"], agg[method]["chosen_on_fit"]
            lines.append(
                f"| {method}, {group_name} encoder (n={n}) | {_fmt(a['fragmentation'])} | "
                f"{_fmt(c['param'])} | {_fmt(c['merge_fp_rate'])} | {_fmt(c['fragmentation'])} | "
                f"{_fmt(c['count_error_mean'])} | {_fmt(c['count_error_abs_mean'])} | "
                f"{_fmt(c['ari_mean'])} |"
            )
    for name, row in result["baselines"].items():
        a, c = row["at_5pct_test"], row["chosen_on_fit"]
        lines.append(
            f"| {name} | {_fmt(a['fragmentation'])} | {_fmt(c['param'])} | "
            f"{_fmt(c['merge_fp_rate'])} | {_fmt(c['fragmentation'])} | "
            f"{_fmt(c['count_error_mean'])} | {_fmt(c['count_error_abs_mean'])} | "
            f"{_fmt(c['ari_mean'])} |"
        )
    return "\n".join(lines)


def plot_curves(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The curves drawn: every method on the first trained encoder, average linkage on the
    first untrained one, and the baselines (the JSON has every encoder's curves)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    trained = result["trained"][0]
    for m in grouping.METHODS:
        curves[f"{m}, trained {trained['name']}"] = trained["methods"][m]["curve"]
    if result["untrained"]:
        untrained = result["untrained"][0]
        curves[f"average, untrained {untrained['name']}"] = untrained["methods"]["average"]["curve"]
    curves["time gap"] = result["baselines"]["time_gap"]["curve"]
    curves["one per tracklet"] = result["baselines"]["one_per_tracklet"]["curve"]
    return curves


def run_counting(
    data: Path,
    trained: Sequence[tuple[str, Path]],
    untrained: Sequence[tuple[str, Path]] = (),
    split: str = "test",
    fit_split: str = "val",
    out: Path = Path("var/bench/counting"),
    cache_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the counting benchmark; write ``out/counting.json`` and
    ``out/fragmentation_vs_merge_fp.png``; return the result (with ``table``)."""
    if not trained:
        raise InvalidInputError("bench counting needs at least one --model")
    started = time.perf_counter()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else out / "crop_cache"
    fit, test = _Split(data, fit_split), _Split(data, split)
    rows = {
        "trained": [
            {"name": n, **_encoder_rows(p, fit, test, cache, progress)} for n, p in trained
        ],
        "untrained": [
            {"name": n, **_encoder_rows(p, fit, test, cache, progress)} for n, p in untrained
        ],
    }
    reliability = [r.pop("_reliability") for r in rows["trained"] + rows["untrained"]]
    result: dict[str, Any] = {
        "benchmark": "counting",
        "data": str(data),
        "split": split,
        "fit_split": fit_split,
        "max_merge_fp": MAX_MERGE_FP,
        "seed": seed,
        "test_procedures": len(test.by_procedure),
        "test_tracklets": len(test.tracklets),
        "test_polyps": sum(len(set(t)) for t in test.truth.values()),
        "cannot_link_pairs_test": int(sum(f.sum() // 2 for f in test.forbid.values())),
        **rows,
        "trained_aggregate": _aggregate(rows["trained"]),
        "untrained_aggregate": _aggregate(rows["untrained"]) if rows["untrained"] else None,
        "baselines": _baselines(fit, test),
        "environment": environment(),
    }
    result["seconds"] = time.perf_counter() - started
    result["table"] = format_table(result)
    write_result(out / "counting.json", result, echo=False)
    try:
        from polypindex.training.plots import save_fragmentation_png, save_reliability_png

        first = rows["trained"][0]["name"]
        save_reliability_png(
            reliability[0],
            out / "reliability.png",
            f"same-polyp probability, {split} pairs, encoder {first} (fit on {fit_split})",
        )
        save_fragmentation_png(
            plot_curves(result), out / "fragmentation_vs_merge_fp.png", MAX_MERGE_FP
        )
    except ConfigError as exc:  # matplotlib not installed: the JSON is still written
        result["plot_error"] = str(exc)
    (out / "table.md").write_text(result["table"] + "\n")
    return json.loads(json.dumps(result))
