"""Probes know their quality: training stores the validation AUROC, ECE and (histology)
the NPV for adenoma on diminutive polyps; a probe below the AUROC setting is
unreliable, one without a measured AUROC (older files) unknown — never reliable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypindex.model.data.config import FragmentConfig
from polypindex.model.scoring.probe import CLASSES, Probe, load_probe
from polypindex.model.scoring.probe_quality import RELIABLE_AUROC, probe_quality
from polypindex.training.probe import npv_on_diminutive, train_probe
from polypindex.training.probe_data import FragmentSet
from polypindex.training.probe_head import ProbeTrainConfig

D = 4


def _probe(metrics: dict[str, object] | None) -> Probe:
    meta: dict[str, object] = {
        "task": "histology",
        "classes": list(CLASSES["histology"]),
        "head": "linear",
        "temperature": 1.0,
        "encoder_version": "enc",
        "dim": D,
    }
    if metrics is not None:
        meta["metrics"] = metrics
    arrays = {"linear.weight": np.ones((1, D), np.float32), "linear.bias": np.zeros(1, np.float32)}
    return Probe(arrays, meta)


def test_the_auroc_setting_decides_reliability() -> None:
    assert RELIABLE_AUROC == 0.7
    good = _probe({"validation": {"auroc": 0.82, "ece": 0.04, "source": "val split, 15 polyps"}})
    assert good.reliable and good.quality().status == "reliable"
    assert good.quality(min_auroc=0.9).status == "unreliable"  # the setting
    chance = _probe({"validation": {"auroc": 0.55, "ece": 0.2, "npv_adenoma_diminutive": 0.5}})
    q = chance.quality()
    assert not chance.reliable and q.status == "unreliable" and q.auroc == 0.55
    assert q.npv_adenoma_diminutive == 0.5 and "0.55 < 0.7" in q.reason
    assert q.to_dict()["reliable"] is False


def test_older_probe_files_load_as_unknown_or_with_their_recorded_auroc(tmp_path: Path) -> None:
    bare = load_probe(_probe(None).save(tmp_path / "bare.npz"))
    q = bare.quality()
    assert (q.status, q.reliable, q.auroc) == ("unknown", False, None) and "older" in q.reason
    assert _probe({"val_ece_after": 0.1}).quality().status == "unknown"
    older = _probe({"val_identity_auroc": 0.75, "val_ece_after": 0.1}).quality()
    assert older.status == "reliable" and older.source is not None and "older" in older.source
    assert probe_quality("size", {"validation": {"auroc": None}}).status == "unknown"
    assert probe_quality("size", {"validation": {"auroc": float("nan")}}).status == "unknown"


def test_npv_on_diminutive_polyps() -> None:
    meta = {"a": {"size": 3.0}, "b": {"size": 4.0}, "c": {"size": 9.0}, "d": {"size": 2.0}}
    out = npv_on_diminutive(["a", "b", "c", "d"], [0, 1, 0, 1], [0, 0, 0, 1], meta)
    assert (out["n_diminutive_polyps"], out["tn"], out["fn"], out["value"]) == (3, 1, 1, 0.5)
    none = npv_on_diminutive(["c"], [0], [0], meta)
    assert none["value"] is None and "no diminutive" in none["reason"]


def _fragments(split: str, informative: bool, seed: int) -> FragmentSet:
    rng = np.random.default_rng(seed)
    ids = [f"{split}{i}" for i in range(24) for _ in range(3)]
    adenoma = {f"{split}{i}": i % 2 == 0 for i in range(24)}
    meta = {
        p: {"size": 3.0 if i % 3 else 8.0, "histology": "adenoma" if a else "hyperplastic"}
        for i, (p, a) in enumerate(adenoma.items())
    }
    x = rng.normal(size=(len(ids), D)).astype(np.float32)
    if informative:
        x[:, 0] += np.asarray([6.0 if adenoma[p] else -6.0 for p in ids], np.float32)
    return FragmentSet(x, ids, [f"{p}/0" for p in ids], meta, "enc", split, FragmentConfig())


@pytest.mark.parametrize("informative", [True, False])
def test_training_stores_held_out_validation_metrics(informative: bool, tmp_path: Path) -> None:
    train = _fragments("train", informative, 0)
    val = _fragments("val", informative, 1)
    fit = train_probe(
        "histology", train, ProbeTrainConfig(epochs=15, seed=0), "enc", evaluation=val
    )
    validation = fit.probe.metrics["validation"]
    assert validation["source"] == "val split, 24 polyps" and validation["n_polyps"] == 24
    assert 0.0 <= validation["ece"] <= 1.0
    assert "npv_adenoma_diminutive" in validation
    assert validation["npv_adenoma_diminutive_detail"]["n_diminutive_polyps"] == 16
    loaded = load_probe(fit.probe.save(tmp_path / "p.npz"))
    if informative:
        assert validation["auroc"] > 0.8 and loaded.reliable
    else:
        assert validation["auroc"] < 0.7 and not loaded.reliable
        assert loaded.quality().status == "unreliable"
    # without another split, the calibration polyps of the training split
    own = train_probe("histology", train, ProbeTrainConfig(epochs=2, seed=0), "enc")
    assert own.probe.metrics["validation"]["source"].startswith("the probe's calibration polyps")
