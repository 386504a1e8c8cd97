"""One model, one identity, on every runtime and CPU (docs/runtimes.md#one-identity-per-model).

A tiny real HMVE (convolutions and attention, exported by ``model.nets.export``) is served by
ONNX Runtime FP32, OpenVINO FP32 and OpenVINO BF16 under one encoder version; a store
indexed (with probes and polyp entities) on one runtime serves on another with the same
answers; a reduced precision that fails the parity check falls back to FP32 and says
why; a tampered file is refused; stores and probes of the old ``+bf16`` versions are
migrated onto the base version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient
from helpers.synth import small_dataset
from helpers.tiny_models import TINY
from typer.testing import CliRunner

from polypindex.cli import app
from polypindex.indexer.grouping import group_stored, reid_calibration
from polypindex.indexer.pipeline import index_dataset
from polypindex.indexer.predictions import installed_probes
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ModelLoadError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.nets.export import export_onnx
from polypindex.model.nets.hmve import HMVE
from polypindex.model.runtime import loader as backends
from polypindex.model.runtime.base import META_PREFIX
from polypindex.model.runtime.loader import check_parity, load_encoder
from polypindex.model.runtime.onnx import OnnxEncoder
from polypindex.model.runtime.openvino import openvino_available
from polypindex.model.runtime.parity import REFERENCE_KEY, Reference
from polypindex.model.scoring.probe import Probe, load_probe
from polypindex.service.app import create_app
from polypindex.service.settings import Settings
from polypindex.training.probe import train_probe_on_encoder

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")
RUNTIMES = [
    ("onnxruntime", "fp32"),
    pytest.param("openvino", "fp32", marks=needs_openvino),
    pytest.param("openvino", "bf16", marks=needs_openvino),
]
PREPROCESS = PreprocessConfig(im_size=32, bbox_scale_factor=2.0)
FRAGMENT = FragmentConfig(stride=2, fragment_length=-1, max_frames=6)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny synthetic dataset, a tiny HMVE exported to ONNX, and its two probes
    (trained on ONNX Runtime FP32)."""
    root = tmp_path_factory.mktemp("identity")
    data = small_dataset(
        root, procedures=4, frames=240, size=(96, 80), tracklet_length=(20, 40), seed=3
    )
    torch.manual_seed(0)
    checkpoint = root / "encoder.pt"
    save_encoder_checkpoint(
        checkpoint,
        HMVE(TINY).eval(),
        TINY,
        PREPROCESS,
        FRAGMENT,
        {"reid_threshold": 0.7, "precision": "bf16-mixed", "seed": 5},
    )
    onnx_path = root / "model" / "encoder.onnx"
    version = export_onnx(checkpoint, onnx_path).encoder_version
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYPINDEX_RUNTIME", "onnxruntime")
        mp.setenv("POLYPINDEX_PRECISION", "fp32")
        for task in ("size", "histology"):
            train_probe_on_encoder(
                task, data, onnx_path, cache_dir=root / "probe_cache", progress=False
            )
    return {"root": root, "data": data, "onnx": onnx_path, "version": version}


@pytest.mark.parametrize(("runtime", "precision"), RUNTIMES)
def test_every_runtime_serves_the_models_version(
    world: dict[str, Any], runtime: str, precision: str
) -> None:
    encoder = load_encoder(world["onnx"], runtime, precision, threads=1)
    info = encoder.describe()
    assert encoder.version == info["encoder_version"] == world["version"]
    assert "+" not in encoder.version
    assert info["runtime"] == runtime
    assert info["parity"]["reference"] == "metadata" and info["parity"]["passed"]
    assert info["parity"]["min_cosine"] >= 0.999
    assert "fallback_reason" not in info
    reference = load_encoder(world["onnx"], "onnxruntime", "fp32")
    x = np.random.default_rng(1).standard_normal((3, 4, 3, 32, 32)).astype(np.float32)
    cos = np.sum(encoder.embed(x) * reference.embed(x), axis=1)
    assert np.all(cos >= 0.999), cos


@pytest.mark.parametrize(
    "faked",
    [
        "fpu sse4_2 avx avx2 fma",  # AMD EPYC, AVX2 only
        "avx2 avx512f avx512bw avx512_bf16 avx512_vnni",  # Zen 4
        "avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8",  # Intel with AMX
    ],
)
def test_auto_on_each_cpu_serves_the_same_version(
    world: dict[str, Any], faked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(backends.FAKE_FLAGS_ENV, faked)
    encoder = load_encoder(world["onnx"])  # auto / auto
    bf16 = "bf16" in faked
    expected = "openvino" if bf16 and openvino_available() else "onnxruntime"
    assert encoder.runtime == expected
    assert encoder.version == world["version"]


def _index(world: dict[str, Any], home: Path, runtime: str, precision: str) -> Settings:
    encoder = load_encoder(world["onnx"], runtime, precision)
    probes = installed_probes(world["onnx"].parent / "probes", encoder.version)
    assert sorted(p.task for p in probes) == ["histology", "size"]
    url = f"sqlite:///{home / 'index' / 'polypindex.db'}"
    store = Store(url)
    try:
        for split in ("val", "test"):
            index_dataset(world["data"], split, store, home / "index", encoder, progress=False,
                          probes=probes)  # fmt: skip
        group_stored(
            store,
            encoder.version,
            reid_calibration(encoder),
            reid_threshold=encoder.reid_threshold,
        )
    finally:
        store.close()
    return Settings(home=home, model_path=world["onnx"], database_url=url, index_dir=home / "index")


def _answers(settings: Settings, runtime: str, precision: str) -> dict[str, Any]:
    settings = settings.model_copy(update={"runtime": runtime, "precision": precision})
    with TestClient(create_app(settings)) as client:
        health = client.get("/healthz").json()
        procedures = [p["uid"] for p in client.get("/procedures").json()["procedures"]]
        polyps = {uid: client.get(f"/procedures/{uid}/polyps").json() for uid in procedures}
        store = Store(settings.database_url)
        ids = sorted(i for uid in procedures for i in store.tracklet_ids_for_procedure(uid))
        store.close()
        hits = {}
        for tid in ids:
            r = client.post("/search", json={"query": {"tracklet_id": tid}, "k": 5})
            assert r.status_code == 200, r.text
            hits[tid] = [(h["tracklet_id"], h.get("predictions")) for h in r.json()["results"]]
        reid = client.post(
            "/reid", json={"a": {"tracklet_id": ids[0]}, "b": {"tracklet_id": ids[1]}}
        )
        assert reid.status_code == 200, reid.text
        predict = client.post("/predict", json={"tracklet": {"tracklet_id": ids[0]}})
        assert predict.status_code == 200, predict.text
    return {
        "health": health,
        "hits": hits,
        "polyps": polyps,
        "reid": reid.json()["similarity"],
        "predict": predict.json(),
    }


@needs_openvino
@pytest.mark.parametrize(
    ("indexed_on", "served_on"),
    [
        (("onnxruntime", "fp32"), ("openvino", "bf16")),
        (("openvino", "bf16"), ("onnxruntime", "fp32")),
    ],
    ids=["fp32-store-served-bf16", "bf16-store-served-fp32"],
)
def test_a_store_serves_on_another_runtime_with_the_same_answers(
    world: dict[str, Any], tmp_path: Path, indexed_on: tuple[str, str], served_on: tuple[str, str]
) -> None:
    settings = _index(world, tmp_path, *indexed_on)
    before = _answers(settings, *indexed_on)
    after = _answers(settings, *served_on)
    for answers in (before, after):
        health = answers["health"]
        assert health["status"] == "ok", health
        assert health["encoder_version"] == world["version"]
        assert health["index_size"] == len(answers["hits"]) > 0
        assert set(health["probes"]) == {"size", "histology"}
        assert all(body["grouped"] and body["entities"] for body in answers["polyps"].values())
    assert after["health"]["encoder_runtime"]["runtime"] == served_on[0]
    assert after["hits"] == before["hits"]
    assert after["polyps"] == before["polyps"]
    assert after["reid"] == pytest.approx(before["reid"], abs=1e-6)
    assert after["predict"] == before["predict"]


class _Noisy(OnnxEncoder):
    """ONNX Runtime posing as a BF16 runtime that is off by far more than BF16 is."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, providers=["CPUExecutionProvider"])
        self.runtime_precision = self.precision = "bf16"

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = super()._run(x)
        return out + np.random.default_rng(0).normal(scale=1.0, size=out.shape)


def test_a_failed_parity_check_falls_back_to_fp32_and_says_why(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_build = backends._build

    def build(path: Any, runtime: str, precision: str, *args: Any) -> Any:
        return (
            _Noisy(Path(path))
            if precision == "bf16"
            else real_build(path, runtime, precision, *args)
        )

    monkeypatch.setattr(backends, "_build", build)
    monkeypatch.setattr(backends, "resolve_runtime", lambda *a, **k: ("onnxruntime", "bf16"))
    encoder = load_encoder(world["onnx"], "openvino", "bf16")
    info = encoder.describe()
    assert info["precision"] == "fp32" and info["parity"]["passed"]
    assert "failed the parity check" in info["fallback_reason"]
    assert encoder.version == world["version"]
    # the service shows why
    settings = Settings(
        home=tmp_path,
        model_path=world["onnx"],
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        index_dir=tmp_path / "index",
    )
    with TestClient(create_app(settings)) as client:
        runtime = client.get("/healthz").json()["encoder_runtime"]
    assert "failed the parity check" in runtime["fallback_reason"]


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save_model(proto, str(dst))
    return dst


def test_a_changed_file_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    def scale_weights(proto: onnx.ModelProto) -> None:
        for init in proto.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim >= 2:
                init.CopyFrom(onnx.numpy_helper.from_array(-arr, init.name))

    changed = _rewrite(world["onnx"], tmp_path / "changed.onnx", scale_weights)
    with pytest.raises(ModelLoadError, match="reference embeddings"):
        load_encoder(changed, "onnxruntime", "fp32")


def test_a_model_without_reference_is_checked_against_the_reference_runtime(
    world: dict[str, Any], tmp_path: Path
) -> None:
    def drop_reference(proto: onnx.ModelProto) -> None:
        keep = [p for p in proto.metadata_props if p.key != META_PREFIX + REFERENCE_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(keep)

    old = _rewrite(world["onnx"], tmp_path / "old.onnx", drop_reference)
    encoder = load_encoder(old, "onnxruntime", "fp32")
    assert encoder.reference is None
    assert encoder.describe()["parity"]["reference"] == "computed"
    assert check_parity(encoder)["passed"]


def test_reference_round_trip(world: dict[str, Any]) -> None:
    encoder = load_encoder(world["onnx"], "onnxruntime", "fp32")
    assert encoder.reference is not None
    again = Reference.from_json(encoder.reference.to_json())
    np.testing.assert_array_equal(again.embeddings, encoder.reference.embeddings)
    assert again.inputs_match(again.inputs())


# --- the old versions, migrated ---------------------------------------------------------


class _Legacy:
    """An encoder reporting the version an old BF16 runtime wrote."""

    def __init__(self, inner: Any, suffix: str = "+bf16") -> None:
        self._inner, self.version = inner, inner.version + suffix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def legacy_store(world: dict[str, Any], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A store whose test split was indexed under ``<version>+bf16`` and whose val split
    under both the base version and ``+bf16`` (the old split), set back to 0006."""
    base = load_encoder(world["onnx"], "onnxruntime", "fp32")
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    store = Store(url)
    index_dataset(world["data"], "test", store, tmp_path / "index", _Legacy(base), progress=False)
    index_dataset(world["data"], "val", store, tmp_path / "index", _Legacy(base), progress=False)
    index_dataset(world["data"], "val", store, tmp_path / "index", base, progress=False)
    store.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # what 0007 and later added is not there yet at 0006
        conn.execute(sa.text("DROP TABLE changes"))
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN heartbeat_at"))
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0006'"))
    engine.dispose()
    yield url, tmp_path
    shutil.rmtree(tmp_path / "index", ignore_errors=True)


def test_old_suffixed_versions_are_migrated_onto_the_base(
    world: dict[str, Any], legacy_store: tuple[str, Path]
) -> None:
    url, home = legacy_store
    version = world["version"]
    store = Store(url)  # opening migrates to the head
    try:
        assert store.encoder_versions() == [version]
        uids = [p.uid for p in store.list_procedures()]
        assert len(uids) == len(set(uids)), "a procedure stored twice after the migration"
        n = store.count_tracklets(version)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            leftovers = conn.execute(
                sa.text("SELECT count(*) FROM tracklets WHERE encoder_version LIKE '%+bf16'")
            ).scalar()
            orphans = conn.execute(
                sa.text(
                    "SELECT count(*) FROM tracklets t LEFT JOIN procedures p "
                    "ON t.procedure_id = p.id WHERE p.id IS NULL"
                )
            ).scalar()
        engine.dispose()
        assert leftovers == 0 and orphans == 0 and n > 0
    finally:
        store.close()
    settings = Settings(
        home=home, model_path=world["onnx"], database_url=url, index_dir=home / "index"
    )
    with TestClient(create_app(settings)) as client:
        health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["index_size"] == n


def test_a_probe_of_a_suffixed_version_serves_the_base(
    world: dict[str, Any], tmp_path: Path
) -> None:
    probe = load_probe(world["onnx"].parent / "probes" / "size.npz")
    meta = {**probe.metadata, "encoder_version": world["version"] + "+bf16"}
    legacy = Probe(probe._weights, meta).save(tmp_path / "size.npz")
    again = load_probe(legacy, encoder_version=world["version"])
    assert again.encoder_version == world["version"]


def test_info_says_which_precision_trained_the_model_and_what_runs_it(
    world: dict[str, Any], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["info", str(world["onnx"]), "--json", "--home", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["training"]["precision"] == "bf16-mixed" and facts["training"]["seed"] == 5
    assert facts["encoder_version"] == world["version"]
    assert facts["reference_embeddings"] is True
    assert facts["runtime_here"]["parity"]["passed"] is True
    text = CliRunner().invoke(app, ["info", str(world["onnx"]), "--home", str(tmp_path)])
    assert text.exit_code == 0 and "precision bf16-mixed" in text.output
    assert world["version"] in text.output
    missing = CliRunner().invoke(app, ["info", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 1 and "not found" in missing.output
