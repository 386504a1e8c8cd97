"""polypindex.model.scoring.probe: labels, the vote and its tie rule, the numpy probe, its file and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError, ModelLoadError
from polypindex.model.scoring.probe import (
    CLASSES,
    MLP_HIDDEN,
    Probe,
    ProbePrediction,
    gelu,
    load_probe,
    majority_vote,
    probe_path,
    sigmoid,
    task_label,
    vote_by_identity,
)

ROOT = Path(__file__).resolve().parents[2]
ENCODER = "hmve-test-aaaaaaaaaaaa"
D = 6


@pytest.mark.parametrize(
    ("task", "metadata", "expected"),
    [
        ("size", {"size": 2.0}, 1),
        ("size", {"size": 5.0}, 1),  # ≤ 5 mm is diminutive
        ("size", {"size": 5}, 1),
        ("size", {"size": 5.1}, 0),
        ("size", {"size": 16.0}, 0),
        ("size", {}, None),
        ("size", {"size": None}, None),
        ("size", {"size": "4"}, None),
        ("size", {"size": float("nan")}, None),
        ("size", {"size": 0.0}, None),
        ("size", {"size": True}, None),
        ("histology", {"histology": "adenoma"}, 1),
        ("histology", {"histology": "Adenoma "}, 1),
        ("histology", {"histology": "hyperplastic"}, 0),
        ("histology", {"histology": "sessile_serrated"}, 0),
        ("histology", {"histology": "traditional_serrated"}, 0),
        ("histology", {"histology": "inflammatory"}, 0),
        ("histology", {"histology": "unknown"}, None),
        ("histology", {"histology": "carcinoma"}, None),
        ("histology", {}, None),
        ("histology", {"histology": 1}, None),
    ],
)
def test_task_label(task: str, metadata: dict[str, Any], expected: int | None) -> None:
    assert task_label(task, metadata) == expected


def test_unknown_task_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="unknown probe task 'shape'"):
        task_label("shape", {})
    with pytest.raises(InvalidInputError, match="histology"):
        probe_path("probes", "shape")


def test_probe_path() -> None:
    assert probe_path("a/probes", "size") == Path("a/probes/size.npz")
    assert probe_path(Path("/m/probes"), "histology") == Path("/m/probes/histology.npz")


@pytest.mark.parametrize(
    ("probabilities", "label", "mean"),
    [
        ([0.9], 1, 0.9),
        ([0.5], 1, 0.5),  # a vote is positive at p >= 0.5
        ([0.49], 0, 0.49),
        ([0.9, 0.2, 0.8], 1, 19 / 30),  # 2 votes to 1
        ([0.9, 0.1, 0.4], 0, 14 / 30),  # 1 vote to 2, although the mean is close
        ([0.95, 0.45, 0.45], 0, 0.6166666666666667),  # majority wins over the mean
        ([0.6, 0.4], 1, 0.5),  # tie, mean 0.5 >= 0.5 → positive
        ([0.7, 0.2], 0, 0.45),  # tie, mean < 0.5 → negative
        ([0.9, 0.3, 0.55, 0.1], 0, 0.4625),  # 2-2 tie decided by the mean
        ([0.9, 0.3, 0.7, 0.2], 1, 0.525),
    ],
)
def test_majority_vote_and_tie_rule(probabilities: list[float], label: int, mean: float) -> None:
    got_label, got_mean = majority_vote(np.asarray(probabilities))
    assert got_label == label
    assert got_mean == pytest.approx(mean)


def test_majority_vote_rejects_empty_and_nan() -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        majority_vote(np.zeros(0))
    with pytest.raises(InvalidInputError, match="NaN"):
        majority_vote(np.asarray([0.2, np.nan]))


def test_vote_by_identity_groups_fragments() -> None:
    ids, labels, means = vote_by_identity(
        np.asarray([0.9, 0.1, 0.8, 0.6, 0.4, 0.3]), ["a", "b", "a", "c", "c", "b"]
    )
    assert ids == ["a", "b", "c"]
    assert labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(means, [0.85, 0.2, 0.5])
    with pytest.raises(InvalidInputError, match="3 probabilities but 2 identities"):
        vote_by_identity(np.zeros(3), ["a", "b"])


def _linear_probe(task: str = "size", temperature: float = 2.0) -> Probe:
    rng = np.random.default_rng(1)
    arrays = {
        "linear.weight": rng.normal(size=(1, D)).astype(np.float32),
        "linear.bias": np.asarray([0.3], dtype=np.float32),
    }
    meta = {
        "task": task,
        "classes": list(CLASSES[task]),
        "head": "linear",
        "temperature": temperature,
        "encoder_version": ENCODER,
        "dim": D,
        "training": {"seed": 0},
        "metrics": {"val_ece_after": 0.1},
    }
    return Probe(arrays, meta)


def _mlp_probe() -> Probe:
    rng = np.random.default_rng(2)
    arrays = {
        "norm.weight": rng.normal(1.0, 0.1, size=D).astype(np.float32),
        "norm.bias": rng.normal(0.0, 0.1, size=D).astype(np.float32),
        "fc1.weight": rng.normal(size=(MLP_HIDDEN, D)).astype(np.float32) * 0.3,
        "fc1.bias": rng.normal(size=MLP_HIDDEN).astype(np.float32) * 0.1,
        "fc2.weight": rng.normal(size=(1, MLP_HIDDEN)).astype(np.float32) * 0.1,
        "fc2.bias": np.asarray([-0.2], dtype=np.float32),
    }
    meta = {
        "task": "histology",
        "classes": ["non_adenoma", "adenoma"],
        "head": "mlp",
        "temperature": 1.5,
        "encoder_version": ENCODER,
        "dim": D,
    }
    return Probe(arrays, meta)


def test_linear_probe_matches_closed_form() -> None:
    probe = _linear_probe(temperature=2.0)
    x = np.random.default_rng(3).normal(size=(5, D)).astype(np.float32)
    w, b = probe.arrays["linear.weight"][0], probe.arrays["linear.bias"][0]
    expected = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ w + b) / 2.0))
    np.testing.assert_allclose(probe.predict_proba(x), expected, rtol=1e-6)
    assert probe.classes == ("non_diminutive", "diminutive")
    assert probe.version.startswith("probe-size-")


def test_mlp_probe_matches_naive_reference() -> None:
    probe = _mlp_probe()
    x = np.random.default_rng(4).normal(size=(4, D))
    a = {k: v.astype(np.float64) for k, v in probe.arrays.items()}
    out = []
    for row in x:  # one row at a time, written out
        mu, var = row.mean(), ((row - row.mean()) ** 2).mean()
        h = (row - mu) / math.sqrt(var + 1e-5) * a["norm.weight"] + a["norm.bias"]
        h = a["fc1.weight"] @ h + a["fc1.bias"]
        h = np.asarray([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in h])
        z = float(a["fc2.weight"][0] @ h + a["fc2.bias"][0])
        out.append(1 / (1 + math.exp(-z / 1.5)))
    np.testing.assert_allclose(probe.predict_proba(x), out, rtol=1e-9)


def test_gelu_and_sigmoid_edge_values() -> None:
    assert gelu(np.asarray([0.0]))[0] == 0.0
    assert gelu(np.asarray([10.0]))[0] == pytest.approx(10.0)
    s = sigmoid(np.asarray([-800.0, 0.0, 800.0]))
    assert s.tolist() == [0.0, 0.5, 1.0]


def test_predict_tracklet_votes_over_fragments() -> None:
    probe = _linear_probe()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, D)).astype(np.float32)
    p = probe.predict_proba(x)
    pred = probe.predict_tracklet(x)
    assert isinstance(pred, ProbePrediction)
    label, mean = majority_vote(p)
    assert pred == ProbePrediction("size", probe.classes[label], mean)
    single = probe.predict_tracklet(x[0])  # one (D,) vector = one fragment
    assert single.probability == pytest.approx(p[0])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, D + 1), dtype=np.float32),
        np.zeros((0, D), dtype=np.float32),
        np.zeros((2, 3, D), dtype=np.float32),
        np.full((2, D), np.nan, dtype=np.float32),
        np.asarray([["a"] * D]),
        [[0.0] * D],
    ],
)
def test_predict_proba_rejects_bad_input(bad: Any) -> None:
    with pytest.raises(InvalidInputError):
        _linear_probe().predict_proba(bad)


def test_save_load_roundtrip_keeps_version_and_outputs(tmp_path: Path) -> None:
    for probe in (_linear_probe(), _mlp_probe()):
        path = probe.save(tmp_path / "probes" / f"{probe.task}.npz")
        loaded = load_probe(path, encoder_version=ENCODER)
        assert loaded.version == probe.version
        assert (loaded.task, loaded.classes, loaded.head) == (probe.task, probe.classes, probe.head)
        assert loaded.temperature == probe.temperature
        assert loaded.metadata.get("training") == probe.metadata.get("training")
        x = np.random.default_rng(6).normal(size=(3, D)).astype(np.float32)
        np.testing.assert_array_equal(loaded.predict_proba(x), probe.predict_proba(x))
    assert not list(tmp_path.rglob("*.tmp*")), "temporary files left behind"


def test_version_changes_with_weights_or_temperature() -> None:
    assert _linear_probe(temperature=2.0).version != _linear_probe(temperature=2.5).version
    assert _linear_probe().version == _linear_probe().version


def test_encoder_mismatch_names_both_versions(tmp_path: Path) -> None:
    probe = _linear_probe()
    with pytest.raises(EncoderMismatchError) as info:
        probe.check_encoder("hmve-other-bbbbbbbbbbbb")
    assert ENCODER in str(info.value) and "hmve-other-bbbbbbbbbbbb" in str(info.value)
    path = probe.save(tmp_path / "size.npz")
    with pytest.raises(EncoderMismatchError, match="hmve-other"):
        load_probe(path, encoder_version="hmve-other-bbbbbbbbbbbb")
    probe.check_encoder(ENCODER)  # no error


def test_missing_and_corrupt_files_raise_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_probe(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ModelLoadError, match=str(corrupt)):
        load_probe(corrupt)
    truncated = tmp_path / "truncated.npz"
    good = _linear_probe().save(tmp_path / "good.npz").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=str(truncated)):
        load_probe(truncated)
    no_meta = tmp_path / "no_meta.npz"
    np.savez(no_meta, **{"linear.weight": np.zeros((1, D)), "linear.bias": np.zeros(1)})
    with pytest.raises(ModelLoadError, match="no metadata"):
        load_probe(no_meta)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"temperature": -1.0}, "temperature"),
        ({"head": "transformer"}, "head"),
        ({"task": "shape"}, "task"),
        ({"classes": ["a", "b"]}, "classes"),
        ({"dim": D + 1}, "shape"),
    ],
)
def test_invalid_metadata_raises_model_load_error(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    probe = _linear_probe()
    meta = {**probe.metadata, **change}
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        metadata=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **probe.arrays,
    )
    with pytest.raises(ModelLoadError, match=message):
        load_probe(path)


def test_probe_serves_without_torch(tmp_path: Path) -> None:
    path = _mlp_probe().save(tmp_path / "histology.npz")
    code = (
        "import sys, numpy as np; from model.scoring.probe import load_probe; "
        f"p = load_probe({str(path)!r}, encoder_version={ENCODER!r}); "
        f"pred = p.predict_tracklet(np.ones((3, {D}), dtype=np.float32)); "
        "print(pred.label in p.classes, 'torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True False False"
