"""Calibration by context and abstention on the demo model (docs/results.md#same-polyp-answers-by-context).

For the model's stored calibration (:class:`model.scoring.calibration.Calibration`) and
every pair of tracklets of a split, the answer of the one decision rule
(:func:`model.scoring.reid.decide`, what ``/reid``, ``/search`` hits and grouping
use), on

- ``test``: the test split of the default synthetic set (``<home>/data/synth``), and
- ``shifted``: the test split of the ``shifted`` generator preset
  (``<home>/data/synth_shifted``; ``polypindex synth --preset shifted --out ...``).

Per set and context (pairs within one procedure, pairs across procedures): pairs,
same-polyp pairs, ECE (15 bins) with the ECE a perfectly calibrated predictor would
show on the same pairs (its mean over 200 draws of the labels: the noise floor), Brier
score against the base-rate predictor's (the calibration's fitting prior, and the set's
own base rate), and the answers: how many ``same`` / ``different`` / ``uncertain``,
the precision of ``same`` and the NPV of ``different``. Plus ``/reid`` of a tracklet
with itself (by id, and by identical embeddings). With ``--baseline OLD.onnx`` (a
model with a format-``/1`` pooled curve) the same pairs under its old rule
(``p ≥ θ_cal`` means "same polyp"), for comparison. Reliability diagrams per context
go to ``--plots`` when matplotlib is installed.

    python -m polypindex.benchmarks.calibration --home var --out var/bench/calibration.json \\
        [--baseline OLD.onnx] [--plots docs/img]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.protocols import embed_tracklets_onnx
from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import TrackletConfig
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.calibration import WITHIN_COSINE, Calibration
from polypindex.model.scoring.contexts import ANSWERS
from polypindex.model.scoring.cosine_curve import CosineCalibration
from polypindex.model.scoring.metrics import expected_calibration_error
from polypindex.model.scoring.pairs import TrackletFacts, pair_evidence
from polypindex.model.scoring.reid import decide

SETS = ("test", "shifted")
NOISE_DRAWS = 200


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def ece_noise_floor(p: np.ndarray, draws: int = NOISE_DRAWS, seed: int = 0) -> float:
    """Mean ECE of a perfectly calibrated predictor: labels drawn as Bernoulli(p)."""
    rng = np.random.default_rng(seed)
    return float(
        np.mean(
            [
                expected_calibration_error(p, (rng.random(p.size) < p).astype(np.int64))
                for _ in range(draws)
            ]
        )
    )


def context_summary(
    p: np.ndarray, same: np.ndarray, answers: Sequence[str], prior: float | None
) -> dict[str, Any]:
    """Calibration and answer statistics of one context's pairs."""
    y = np.asarray(same, dtype=bool)
    a = np.asarray(answers)
    out: dict[str, Any] = {"n_pairs": int(y.size), "n_positive": int(y.sum())}
    if y.size == 0:
        return out
    given = {k: int(np.sum(a == k)) for k in ANSWERS}
    correct_same = int(np.sum((a == "same") & y))
    correct_diff = int(np.sum((a == "different") & ~y))
    base = float(y.mean())
    out.update(
        base_rate=base,
        ece=expected_calibration_error(p, y.astype(np.int64)),
        ece_noise_floor=ece_noise_floor(p),
        brier=float(np.mean((p - y) ** 2)),
        brier_fit_prior=None if prior is None else float(np.mean((prior - y) ** 2)),
        brier_own_base_rate=base * (1 - base),
        answers=given,
        precision_same=_rate(correct_same, given["same"]),
        npv_different=_rate(correct_diff, given["different"]),
        uncertain_share=given["uncertain"] / y.size,
    )
    return out


def _set_pairs(
    embeddings: np.ndarray, facts: list[TrackletFacts], identities: list[str]
) -> list[tuple[int, int, float, bool, bool]]:
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cos = np.clip(e @ e.T, -1.0, 1.0)
    n = len(facts)
    return [
        (
            i,
            j,
            float(cos[i, j]),
            identities[i] == identities[j],
            facts[i].procedure == facts[j].procedure,
        )
        for i in range(n)
        for j in range(i + 1, n)
    ]


def evaluate_set(
    calibration: Calibration,
    embeddings: np.ndarray,
    facts: list[TrackletFacts],
    identities: list[str],
) -> dict[str, Any]:
    """Every pair of one set through :func:`decide`, per context, and the self pair.
    (Keys starting with ``_`` hold the probabilities and labels for the plots.)"""
    pairs = _set_pairs(embeddings, facts, identities)
    decisions = [
        decide(pair_evidence(c, facts[i], facts[j]), calibration) for i, j, c, _, _ in pairs
    ]
    out: dict[str, Any] = {"n_tracklets": len(facts), "contexts": {}}
    for name, within in (("within", True), ("cross", False)):
        keep = [k for k, pr in enumerate(pairs) if pr[4] == within]
        y = np.asarray([pairs[k][3] for k in keep], dtype=bool)
        given = [decisions[k].probability for k in keep]
        p = np.asarray([0.0 if v is None else v for v in given], dtype=np.float64)
        fit = calibration.context(name)
        prior = fit.prior if fit is not None else None
        summary = context_summary(p, y, [decisions[k].answer for k in keep], prior)
        if any(v is None for v in given):  # no probability in this context (a legacy model)
            summary.update(ece=None, ece_noise_floor=None, brier=None, probability="none")
        summary["decided_by"] = sorted({decisions[k].context for k in keep})
        summary["_p"], summary["_y"] = p, y
        out["contexts"][name] = summary
    e = embeddings[0] / np.linalg.norm(embeddings[0])
    first = facts[0]
    by_id = decide(pair_evidence(float(e @ e), first, first), calibration)
    anonymous = TrackletFacts(procedure=first.procedure)  # the same embedding, no tracklet id
    by_embedding = decide(pair_evidence(float(e @ e), first, anonymous), calibration)
    out["self_pair"] = {
        k: {"probability": d.probability, "answer": d.answer, "label": d.label}
        for k, d in (("by_id", by_id), ("by_embedding", by_embedding))
    }
    return out


def old_rule(
    old: CosineCalibration,
    embeddings: np.ndarray,
    facts: list[TrackletFacts],
    identities: list[str],
) -> dict[str, Any]:
    """The same pairs under a pooled (format ``/1``) curve's rule: ``p ≥ θ_cal`` is
    "same polyp", anything else "different" (what models of older releases answered)."""
    pairs = _set_pairs(embeddings, facts, identities)
    out: dict[str, Any] = {}
    for name, within in (("within", True), ("cross", False)):
        keep = [pr for pr in pairs if pr[4] == within]
        y = np.asarray([pr[3] for pr in keep], dtype=bool)
        p = np.asarray(old.probability(np.asarray([pr[2] for pr in keep])), dtype=np.float64)
        rule = np.where(p >= old.threshold, "same", "different")
        out[name] = {**context_summary(p, y, list(rule), None), "threshold": old.threshold}
        out[name]["_p"] = p
    return out


def _embed(
    lay: Layout, model: Path, root: Path
) -> tuple[np.ndarray, list[TrackletFacts], list[str]]:
    if not (root / "annotations" / "instances_test.json").is_file():
        raise InvalidInputError(f"no synthetic set at {root} (make it with `polypindex synth`)")
    tracklets = load_coco_split(root, "test").tracklets(TrackletConfig())
    encoder = layout_encoder(lay, model)
    emb = embed_tracklets_onnx(
        encoder, tracklets, lay.crop_cache / "bench_calibration", progress=False
    )
    facts = [TrackletFacts.of_tracklet(t, i) for i, t in enumerate(tracklets)]
    return emb, facts, [str(t.identity_id) for t in tracklets]


def _plots(sets: dict[str, Any], out: Path) -> list[str]:
    from polypindex.training.plots import save_reliability_png

    written = []
    for context in ("within", "cross"):
        curves = {}
        for name, result in sets.items():
            c = result["contexts"][context]
            if c["n_pairs"]:
                curves[f"{name}: by context"] = (c["_p"], c["_y"].astype(np.int64))
                if "_baseline_p" in c:
                    curves[f"{name}: old pooled curve"] = (
                        c["_baseline_p"],
                        c["_y"].astype(np.int64),
                    )
        path = out / f"calibration_{context}.png"
        where = "within one procedure" if context == "within" else "across procedures"
        written.append(
            str(save_reliability_png(curves, path, title=f"same-polyp probability, pairs {where}"))
        )
    return written


def run(
    lay: Layout, model: Path, baseline: Path | None = None, plots: Path | None = None
) -> dict[str, Any]:
    """The benchmark on both sets (module docstring)."""
    calibration = layout_encoder(lay, model).reid_calibration
    if calibration is None:
        raise InvalidInputError(f"{model} has no calibration")
    old = layout_encoder(lay, baseline).reid_calibration if baseline is not None else None
    roots = {"test": lay.demo_data, "shifted": lay.data_dir / "synth_shifted"}
    sets: dict[str, Any] = {}
    for name, root in roots.items():
        emb, facts, ids = _embed(lay, model, root)
        sets[name] = evaluate_set(calibration, emb, facts, ids)
        if old is not None and old.source is not None and baseline is not None:
            before = old_rule(old.source, _embed(lay, baseline, root)[0], facts, ids)
            for context, summary in before.items():
                sets[name]["contexts"][context]["baseline_old_rule"] = summary
                sets[name]["contexts"][context]["_baseline_p"] = summary.pop("_p")
    figures: list[str] = []
    if plots is not None:
        try:
            figures = _plots(sets, plots)
        except ConfigError as exc:  # matplotlib missing
            figures = [f"not drawn: {exc}"]
    for result in sets.values():
        for c in result["contexts"].values():
            for key in [k for k in c if k.startswith("_")]:
                c.pop(key)
    return {
        "benchmark": "calibration",
        "model": str(model),
        "baseline": None if baseline is None else str(baseline),
        "calibration": {
            **calibration.health(),
            "fitted_on": {
                n: {
                    "n_pairs": c.n_pairs,
                    "n_positive": c.n_positive,
                    "operating_metrics": c.metrics.get("operating"),
                }
                for n, c in calibration.contexts.items()
                if n != WITHIN_COSINE
            },
        },
        "sets": sets,
        "figures": figures,
        "environment": environment(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="artefact folder (default var)")
    parser.add_argument(
        "--model", type=Path, default=None, help="default <home>/models/demo/encoder.onnx"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a model with a pooled (/1) curve"
    )
    parser.add_argument("--plots", type=Path, default=None, help="folder of the reliability PNGs")
    parser.add_argument("--out", type=Path, default=Path("var/bench/calibration.json"))
    args = parser.parse_args(argv)
    lay = Layout(home=args.home) if args.home else Layout()
    model = args.model or lay.demo_model_dir / "encoder.onnx"
    write_result(args.out, run(lay, model, args.baseline, args.plots), echo=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
