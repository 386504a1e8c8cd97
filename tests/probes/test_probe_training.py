"""polypindex.training.probe: the polyp split, the heads (torch ↔ numpy parity), labels, caching, and
`train_probe_on_encoder` end to end on a tiny dataset and a tiny ONNX encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from polypindex.model.core.errors import ConfigError, EncoderMismatchError, InvalidInputError
from polypindex.model.core.layout import Layout
from polypindex.model.data.config import FragmentConfig
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.runtime.onnx import OnnxEncoder
from polypindex.model.scoring.probe import Probe, load_probe, probe_path
from polypindex.training.probe import train_probe, train_probe_on_encoder
from polypindex.training.probe_data import (
    FragmentSet,
    encoder_fragment_features,
    label_fragments,
    split_polyps,
)
from polypindex.training.probe_head import ProbeTrainConfig, fit_head


def _labels(n_pos: int, n_neg: int) -> dict[str, int]:
    return {f"p{i:02d}": int(i < n_pos) for i in range(n_pos + n_neg)}


@pytest.mark.parametrize(("n_pos", "n_neg"), [(10, 25), (3, 4), (2, 2), (1, 5), (7, 0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_polyps_is_disjoint_stratified_and_deterministic(
    n_pos: int, n_neg: int, seed: int
) -> None:
    labels = _labels(n_pos, n_neg)
    train, val = split_polyps(labels, seed)
    assert not set(train) & set(val), "a polyp is on both sides"
    assert sorted(train + val) == sorted(labels)
    assert split_polyps(labels, seed) == (train, val)
    for label, n in ((1, n_pos), (0, n_neg)):
        n_val = sum(labels[p] == label for p in val)
        if n >= 2:  # both sides see the class
            assert 1 <= n_val <= n - 1
            assert n_val == min(max(round(0.3 * n), 1), n - 1)
        else:
            assert n_val == 0


def test_split_polyps_changes_with_the_seed() -> None:
    labels = _labels(10, 25)
    splits = {tuple(split_polyps(labels, s)[1]) for s in range(5)}
    assert len(splits) > 1


def test_train_probe_never_puts_a_polyps_fragments_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(12) for _ in range(3)]
    meta = {f"p{i}": {"size": 3.0 if i % 2 else 9.0, "histology": "adenoma"} for i in range(12)}
    fragments = FragmentSet(
        rng.normal(size=(36, 4)).astype(np.float32),
        ids,
        [f"{i}/0" for i in ids],
        meta,
        "enc",
        "train",
        FragmentConfig(),
    )
    fit = train_probe("size", fragments, ProbeTrainConfig(epochs=2, seed=3), "enc")
    train, val = set(fit.report["probe_train_polyps"]), set(fit.report["probe_val_polyps"])
    assert not train & val and train | val == set(meta)
    # histology: every polyp is an adenoma → refused, not guessed
    with pytest.raises(InvalidInputError, match="at least 2 labelled polyps per class"):
        train_probe("histology", fragments, ProbeTrainConfig(epochs=1), "enc")


def test_label_fragments_excludes_and_counts_unknown_labels() -> None:
    ids = ["a", "a", "b", "c", "c", "c", "d"]
    meta = {
        "a": {"size": 3.0, "histology": "adenoma"},
        "b": {"histology": "hyperplastic"},  # no size
        "c": {"size": 12.0, "histology": "unknown"},
        "d": {"size": 5.0, "histology": "inflammatory"},
    }
    fs = FragmentSet(
        np.arange(14, dtype=np.float32).reshape(7, 2),
        ids,
        ids,
        meta,
        "e",
        "train",
        FragmentConfig(),
    )
    size = label_fragments(fs, "size")
    assert size.polyp_labels == {"a": 1, "c": 0, "d": 1}
    assert (size.excluded_polyps, size.excluded_fragments) == (1, 1)
    assert size.labels.tolist() == [1, 1, 0, 0, 0, 1]
    assert size.balance("size") == {
        "polyps": {"non_diminutive": 1, "diminutive": 2},
        "fragments": {"non_diminutive": 3, "diminutive": 3},
    }
    hist = label_fragments(fs, "histology")
    assert hist.polyp_labels == {"a": 1, "b": 0, "d": 0}
    assert (hist.excluded_polyps, hist.excluded_fragments) == (1, 3)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_numpy_forward_matches_torch(head: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 16)) * rng.uniform(0.1, 3, size=16) + 2.0).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 2.5).astype(np.int64)
    model, history = fit_head(x, y, ProbeTrainConfig(head=head, epochs=5, seed=0))
    assert len(history) == 5
    probe = Probe(
        model.export_arrays(),
        {
            "task": "size",
            "classes": ["non_diminutive", "diminutive"],
            "head": head,
            "temperature": 1.7,
            "encoder_version": "enc",
            "dim": 16,
        },
    )
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(probe.logits(x), torch_logits, atol=1e-5)
    np.testing.assert_allclose(
        probe.predict_proba(x),
        torch.sigmoid(torch.from_numpy(torch_logits) / 1.7).numpy(),
        atol=1e-5,
    )


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_fit_head_learns_a_separable_problem(head: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)  # invariant to LayerNorm's per-row shift and scale
    config = ProbeTrainConfig(head=head, epochs=40, batch_size=32, seed=0)
    model, history = fit_head(x, y, config)
    with torch.no_grad():
        acc = float(((model(torch.from_numpy(x)) > 0).numpy() == y).mean())
    assert acc > 0.9
    assert history[-1] < history[0]
    again, _ = fit_head(x, y, config)
    for a, b in zip(model.export_arrays().values(), again.export_arrays().values(), strict=True):
        np.testing.assert_array_equal(a, b)  # seeded: the same probe twice


@pytest.mark.parametrize(
    "kwargs",
    [{"head": "svm"}, {"epochs": 0}, {"lr": 0.0}, {"val_fraction": 1.0}, {"dropout": 1.0}],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ProbeTrainConfig(**kwargs)  # type: ignore[arg-type]


def test_train_on_tiny_encoder_end_to_end(
    tiny_probe_data: tuple[Path, dict[str, str]], tiny_encoder: Path, tmp_path: Path
) -> None:
    data, unknown = tiny_probe_data
    cache = tmp_path / "cache"
    fit, path = train_probe_on_encoder(
        "histology",
        data,
        tiny_encoder,
        config=ProbeTrainConfig(epochs=3, seed=0),
        cache_dir=cache,
        crop_cache_dir=tmp_path / "crops",
        progress=False,
    )
    encoder = layout_encoder(Layout(), tiny_encoder)
    # default location: next to the encoder
    assert path == probe_path(tiny_encoder.parent / "probes", "histology")
    probe = load_probe(path, encoder_version=encoder.version)
    assert probe.version == fit.probe.version
    assert probe.metadata["training"]["fragment"] == encoder.fragment.to_dict()
    report = json.loads((path.parent / "histology.report.json").read_text())
    assert (path.parent / "histology_reliability.png").stat().st_size > 1000
    assert report["excluded_unknown_label"]["polyps"] == 1  # the polyp made 'unknown'
    assert unknown["histology"] not in report["probe_train_polyps"] + report["probe_val_polyps"]
    assert not set(report["probe_train_polyps"]) & set(report["probe_val_polyps"])
    balance = report["label_balance"]
    assert sum(balance["all"]["polyps"].values()) == len(report["probe_train_polyps"]) + len(
        report["probe_val_polyps"]
    )
    assert report["temperature"] == probe.temperature > 0
    assert 0 <= report["val"]["ece_after"] <= 1
    # the probe reads the encoder's own fragments: the service's embeddings
    fragments = encoder_fragment_features(
        encoder, data, "train", cache, tmp_path / "crops", progress=False
    )
    assert fragments.dim == probe.dim == encoder.dim
    assert len(set(fragments.tracklets)) < len(fragments.tracklets), (
        "several fragments per tracklet"
    )
    pred = probe.predict_tracklet(fragments.features[:3])
    assert pred.label in probe.classes and 0 <= pred.probability <= 1
    with pytest.raises(EncoderMismatchError, match=encoder.version):
        load_probe(path, encoder_version="hmve-another-111111111111")


def test_embedding_cache_is_written_once_and_reused(
    tiny_probe_data: tuple[Path, dict[str, str]], tiny_encoder: Path, tmp_path: Path
) -> None:
    data, _ = tiny_probe_data
    encoder = layout_encoder(Layout(), tiny_encoder)
    first = encoder_fragment_features(
        encoder, data, "test", tmp_path, tmp_path / "crops", progress=False
    )
    files = list((tmp_path / encoder.version).glob("test-*.npz"))
    assert len(files) == 1

    class Exploding(OnnxEncoder):
        def embed_sequences(self, *args: object, **kwargs: object) -> np.ndarray:
            raise AssertionError("the cache was not used")

    again = encoder_fragment_features(
        Exploding(tiny_encoder), data, "test", tmp_path, tmp_path / "crops", progress=False
    )
    np.testing.assert_array_equal(first.features, again.features)
    assert first.identities == again.identities and first.tracklets == again.tracklets
    # a different fragment rule is a different cache entry
    other = FragmentConfig(stride=4, fragment_length=-1)
    whole = encoder_fragment_features(
        encoder, data, "test", tmp_path, tmp_path / "crops", fragment=other, progress=False
    )
    assert len(whole.features) == len(set(whole.tracklets)) < len(first.features)
    assert len(list((tmp_path / encoder.version).glob("test-*.npz"))) == 2
