"""ONNX export: dynamic batch and length, metadata, and torch ↔ ONNX Runtime parity.

This is the guard against the two known re-ID export pitfalls: a frozen batch
dimension and inputs normalised twice (docs/method.md#hmve-encoder).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers.tiny_models import TINY

from polypindex.model.core.errors import ModelLoadError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.preprocess import preprocess_frames
from polypindex.model.data.tracklets import fragment_indices
from polypindex.model.nets.encoder import (
    LoadedEncoder,
    load_encoder_checkpoint,
    save_encoder_checkpoint,
)
from polypindex.model.nets.export import (
    DEFAULT_REID_THRESHOLD,
    ONNX_FORMAT,
    PARITY_ATOL,
    ExportReport,
    export_onnx,
    resolve_reid_threshold,
)
from polypindex.model.nets.hmve import HMVE, EncoderConfig
from polypindex.model.runtime.onnx import OnnxEncoder, read_onnx_metadata

PREPROCESS = PreprocessConfig(im_size=32, bbox_scale_factor=3.0)
FRAGMENT = FragmentConfig(stride=3, fragment_length=4, max_frames=5)


@dataclass
class Exported:
    checkpoint: Path
    onnx_path: Path
    report: ExportReport
    encoder: HMVE


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One tiny encoder exported once (the export takes ~10 s on 2 shared cores)."""
    torch.manual_seed(0)
    encoder = HMVE(TINY).eval()
    root = tmp_path_factory.mktemp("export")
    checkpoint = root / "encoder.pt"
    save_encoder_checkpoint(
        checkpoint, encoder, TINY, PREPROCESS, FRAGMENT, {"reid_threshold": 0.73}
    )
    report = export_onnx(checkpoint, root / "out" / "encoder.onnx")
    return Exported(checkpoint, root / "out" / "encoder.onnx", report, encoder)


def _frames(b: int, s: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, s, 3, PREPROCESS.im_size, PREPROCESS.im_size)).astype(np.float32)


def _torch_embed(encoder: HMVE, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder.embed(torch.from_numpy(x)).numpy()


def test_report(exported: Exported) -> None:
    report = exported.report
    assert report.path == exported.onnx_path and report.path.is_file()
    assert report.encoder_version == load_encoder_checkpoint(exported.checkpoint).encoder_version
    assert 0.0 <= report.max_abs_diff < PARITY_ATOL
    assert report.opset >= 18
    assert [p.name for p in report.path.parent.iterdir()] == ["encoder.onnx"]  # no temporary left


def test_batch_and_seq_dims_are_symbolic(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx_path))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "frames"
    assert dims[0].dim_param and dims[1].dim_param
    assert [d.dim_value for d in dims[2:]] == [3, 32, 32]
    (out,) = model.graph.output
    assert out.name == "embedding"
    assert out.type.tensor_type.shape.dim[0].dim_param


@pytest.mark.parametrize(("b", "s"), [(1, 1), (1, 6), (2, 3), (2, 8), (5, 2), (5, 4)])
def test_onnx_matches_torch(exported: Exported, b: int, s: int) -> None:
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    x = _frames(b, s, seed=b * 10 + s)
    (raw,) = session.run(["embedding"], {"frames": x})
    expected = _torch_embed(exported.encoder, x)
    assert raw.shape == (b, TINY.d_model)
    assert np.max(np.abs(raw - expected)) < PARITY_ATOL

    wrapped = OnnxEncoder(exported.onnx_path, providers=["CPUExecutionProvider"]).embed(x)
    normalised = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.max(np.abs(wrapped - normalised)) < PARITY_ATOL


def test_metadata(exported: Exported) -> None:
    meta = read_onnx_metadata(exported.onnx_path)
    assert meta["polypindex.format"] == ONNX_FORMAT
    assert meta["polypindex.encoder_version"] == exported.report.encoder_version
    assert PreprocessConfig.from_dict(json.loads(meta["polypindex.preprocess"])) == PREPROCESS
    fragment = FragmentConfig.from_dict(json.loads(meta["polypindex.fragment"]))
    assert fragment == FragmentConfig(stride=3, fragment_length=-1, drop_last=True, max_frames=5)
    assert EncoderConfig.from_dict(json.loads(meta["polypindex.encoder_config"])) == TINY
    assert int(meta["polypindex.embedding_dim"]) == TINY.d_model
    assert float(meta["polypindex.reid_threshold"]) == 0.73

    encoder = OnnxEncoder(exported.onnx_path)
    assert encoder.version == exported.report.encoder_version
    assert encoder.preprocess == PREPROCESS
    assert encoder.fragment == fragment
    assert encoder.dim == TINY.d_model
    assert encoder.reid_threshold == 0.73
    assert "CPUExecutionProvider" in encoder.providers


def test_embed_tracklet_matches_torch_on_preprocessed_frames(exported: Exported) -> None:
    """Raw images → OnnxEncoder equals torch on ``preprocess_frames`` output (no double
    normalisation, same frame selection as indexing)."""
    rng = np.random.default_rng(7)
    n = 20  # stride 3 → 7 frames, thinned to max_frames=5
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(n)]
    boxes = np.stack([[30 + i, 20 + i / 2, 25, 18] for i in range(n)]).astype(np.float32)
    encoder = OnnxEncoder(exported.onnx_path)
    got = encoder.embed_tracklet(images, boxes)

    (idx,) = fragment_indices(n, encoder.fragment)
    assert len(idx) == 5
    x = preprocess_frames([images[i] for i in idx], boxes[idx], PREPROCESS)[None]
    expected = _torch_embed(exported.encoder, x)[0]
    expected /= np.linalg.norm(expected)
    assert got.shape == (TINY.d_model,) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) < PARITY_ATOL


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_reid_threshold_resolution(caplog: pytest.LogCaptureFixture) -> None:
    def loaded(extra: dict[str, object]) -> LoadedEncoder:
        return LoadedEncoder(HMVE(TINY), TINY, PREPROCESS, FRAGMENT, "hmve-tiny-0", extra)

    assert resolve_reid_threshold(loaded({"reid_threshold": 0.8}), 0.55) == 0.55
    assert resolve_reid_threshold(loaded({"reid_threshold": 0.8})) == 0.8
    with caplog.at_level(logging.WARNING, logger="polypindex.model.nets.export"):
        assert resolve_reid_threshold(loaded({})) == DEFAULT_REID_THRESHOLD
    assert "reid_threshold" in caplog.text
    with pytest.raises(ModelLoadError, match=r"\[0, 1\]"):
        resolve_reid_threshold(loaded({}), 1.5)
