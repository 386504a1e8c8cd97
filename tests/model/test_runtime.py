"""OnnxEncoder on a small hand-built ONNX graph with our metadata (no torch needed).

The graph computes ``embedding = mean_s(mean_hw(frames) @ W) + bias``, so the
expected output has a closed form in numpy. Parity with the real exported HMVE
is tested in ``test_export.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder

from polypindex.indexer.embed import embed_procedure
from polypindex.indexer.sources import ProcedureSource
from polypindex.model.core.errors import InvalidInputError, ModelLoadError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.data.embedding import selected_frames
from polypindex.model.data.preprocess import preprocess_frames
from polypindex.model.data.tracklets import Tracklet, fragment_indices
from polypindex.model.runtime.base import l2_normalize
from polypindex.model.runtime.onnx import OnnxEncoder, read_onnx_metadata

ROOT = Path(__file__).resolve().parents[2]
IM = 16
DIM = 4
PREPROCESS = PreprocessConfig(
    im_size=IM, bbox_scale_factor=2.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
)
FRAGMENT = FragmentConfig(stride=2, fragment_length=-1, max_frames=4)
WEIGHT = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM) / 7.0 - 0.5
BIAS = np.asarray([0.1, -0.2, 0.3, 0.05], dtype=np.float32)


def _metadata() -> dict[str, str]:
    return onnx_metadata("hmve-fake-000000000000", PREPROCESS, FRAGMENT, DIM, "0.65")


def _write_model(path: Path, metadata: dict[str, str]) -> Path:
    return write_mean_colour_encoder(
        path, WEIGHT, BIAS, metadata, im_size=IM, graph_name="fake_hmve"
    )


def _reference(frames: np.ndarray) -> np.ndarray:
    """Closed form of the fake graph, L2-normalised: ``(b, DIM)``."""
    emb = (frames.mean(axis=(3, 4)) @ WEIGHT).mean(axis=1) + BIAS
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _frames(b: int, s: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, s, 3, IM, IM)).astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("runtime") / "fake.onnx", _metadata())


@pytest.fixture(scope="module")
def encoder(model_path: Path) -> OnnxEncoder:
    return OnnxEncoder(model_path, intra_op_threads=1)


def test_metadata_parsed(encoder: OnnxEncoder, model_path: Path) -> None:
    assert encoder.path == model_path
    assert encoder.version == "hmve-fake-000000000000"
    assert encoder.preprocess == PREPROCESS
    assert encoder.fragment == FRAGMENT
    assert encoder.dim == DIM
    assert encoder.reid_threshold == 0.65
    assert encoder.providers[-1] == "CPUExecutionProvider"
    assert read_onnx_metadata(model_path) == _metadata()


@pytest.mark.parametrize(("b", "s"), [(1, 1), (2, 3), (5, 7)])
def test_embed_is_l2_normalised_float32(encoder: OnnxEncoder, b: int, s: int) -> None:
    x = _frames(b, s, seed=b + s)
    emb = encoder.embed(x)
    assert emb.shape == (b, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(emb, _reference(x), atol=1e-5)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 3, IM, IM), dtype=np.float32),  # missing batch axis
        np.zeros((1, 2, 3, IM + 1, IM + 1), dtype=np.float32),  # wrong size
        np.zeros((1, 2, IM, IM, 3), dtype=np.float32),  # channels last
        np.zeros((0, 2, 3, IM, IM), dtype=np.float32),  # empty batch
        np.zeros((1, 2, 3, IM, IM), dtype=np.uint8),  # not normalised
    ],
)
def test_embed_rejects_bad_input(encoder: OnnxEncoder, frames: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match=rf"\[b, s, 3, {IM}, {IM}\]"):
        encoder.embed(frames)


def test_embed_rejects_non_finite(encoder: OnnxEncoder) -> None:
    x = _frames(1, 2)
    x[0, 1, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        encoder.embed(x)


def test_embed_sequences_equals_one_at_a_time(encoder: OnnxEncoder) -> None:
    lengths = [3, 5, 3, 1, 5, 5, 3, 2]
    seqs = [_frames(1, s, seed=i)[0] for i, s in enumerate(lengths)]
    batched = encoder.embed_sequences(seqs, batch_size=2)
    single = np.concatenate([encoder.embed(seq[None]) for seq in seqs])
    assert batched.shape == (len(seqs), DIM) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert encoder.embed_sequences([]).shape == (0, DIM)
    with pytest.raises(InvalidInputError, match="sequence 1"):
        encoder.embed_sequences([seqs[0], seqs[0][0]])


def test_embed_tracklet_uses_model_preprocess_and_fragment_rule(encoder: OnnxEncoder) -> None:
    rng = np.random.default_rng(3)
    n = 11  # stride 2 → 6 frames → thinned to max_frames=4
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(n)]
    boxes = np.asarray([[10 + i, 8, 12, 10] for i in range(n)], dtype=np.float32)
    (idx,) = fragment_indices(n, FRAGMENT)
    expected = _reference(
        preprocess_frames([images[i] for i in idx], boxes[idx], PREPROCESS)[None]
    )[0]
    got = encoder.embed_tracklet(images, boxes)
    assert got.shape == (DIM,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(InvalidInputError, match="boxes"):
        encoder.embed_tracklet(images, boxes[:3])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not found.*nope\.onnx"):
        OnnxEncoder(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        OnnxEncoder(path)


@pytest.mark.parametrize(
    "drop", ["polypindex.format", "polypindex.preprocess", "polypindex.reid_threshold"]
)
def test_missing_metadata_key(tmp_path: Path, drop: str) -> None:
    meta = {k: v for k, v in _metadata().items() if k != drop}
    path = _write_model(tmp_path / "partial.onnx", meta)
    with pytest.raises(ModelLoadError, match=rf"partial\.onnx.*{drop}"):
        OnnxEncoder(path)


def test_without_any_metadata(tmp_path: Path) -> None:
    path = _write_model(tmp_path / "plain.onnx", {})
    with pytest.raises(ModelLoadError, match=r"plain\.onnx"):
        OnnxEncoder(path)


def test_invalid_metadata_value(tmp_path: Path) -> None:
    path = _write_model(
        tmp_path / "badmeta.onnx", {**_metadata(), "polypindex.preprocess": '{"im_size": 2}'}
    )
    with pytest.raises(ModelLoadError, match="invalid polypindex metadata"):
        OnnxEncoder(path)


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.asarray([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_importing_runtime_does_not_import_torch() -> None:
    code = "import sys, model.runtime.onnx; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


class _Recording:
    """An embedder for the indexer that records the sequences it is given."""

    def __init__(self, encoder: OnnxEncoder) -> None:
        self.encoder = encoder
        self.version, self.dim = encoder.version, encoder.dim
        self.preprocess, self.fragment = encoder.preprocess, encoder.fragment
        self.reid_threshold = encoder.reid_threshold
        self.seqs: list[np.ndarray] = []

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        self.seqs += list(seqs)
        return self.encoder.embed_sequences(seqs, batch_size=batch_size)


def test_runtime_and_indexer_embed_the_same_sequences(
    encoder: OnnxEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One frame selection and one crop path: ``embed_tracklet`` (the service) and the
    indexer feed the encoder the identical sequence for the same tracklet."""
    rng = np.random.default_rng(11)
    n = 13  # stride 2 → 7 frames, thinned to max_frames=4
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(n)]
    boxes = np.stack([[4 + i, 6 + i / 3, 14, 11] for i in range(n)]).astype(np.float32)
    given: list[np.ndarray] = []
    embed = encoder.embed
    monkeypatch.setattr(encoder, "embed", lambda x: given.append(x) or embed(x))
    vector = encoder.embed_tracklet(images, boxes)
    ((runtime_seq,),) = given

    frame_ids = np.arange(100, 100 + n, dtype=np.int64)
    source = ProcedureSource(
        "ds:v",
        None,
        "memory",
        [Tracklet("v", "p", 0, frame_ids, boxes)],
        lambda wanted: ((int(f), images[int(f) - 100]) for f in wanted),
    )
    recording = _Recording(encoder)
    result = embed_procedure(source, recording, batch_size=4, index_dir=None)

    (indexer_seq,) = recording.seqs
    np.testing.assert_array_equal(runtime_seq, indexer_seq)
    np.testing.assert_array_equal(result.embeddings[0], vector)
    idx = selected_frames(n, encoder.fragment)
    assert idx.tolist() == [0, 4, 8, 12]
    assert result.rows[0].boxes["sampled_frame_ids"] == (100 + idx).tolist()
    expected = preprocess_frames([images[i] for i in idx], boxes[idx], PREPROCESS)
    np.testing.assert_array_equal(indexer_seq, expected)
