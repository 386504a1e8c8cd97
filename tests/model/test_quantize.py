"""Static INT8 quantisation: QDQ graph, its own encoder version, metadata carried over,
calibration crops from the one crop path, INT8 close to FP32, and the CLI option."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from helpers.coco import write_coco_json
from helpers.indexing import write_coco
from helpers.tiny_models import TINY

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import FragmentConfig, PreprocessConfig, TrackletConfig
from polypindex.model.data.embedding import cached_sequences, selected_frames
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.nets.encoder import save_encoder_checkpoint
from polypindex.model.nets.export import export_onnx
from polypindex.model.nets.hmve import HMVE
from polypindex.model.nets.quantize import (
    CropCalibrationReader,
    calibration_sequences,
    quantize_onnx,
)
from polypindex.model.runtime.onnx import OnnxEncoder

PREPROCESS = PreprocessConfig(im_size=32)
FRAGMENT = FragmentConfig(stride=1, fragment_length=-1, max_frames=8)
SHORT = TrackletConfig(min_tracklet_length=2)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("quantize")
    ckpt = root / "encoder.pt"
    save_encoder_checkpoint(ckpt, HMVE(TINY).eval(), TINY, PREPROCESS, FRAGMENT)
    report = export_onnx(ckpt, root / "fp32.onnx", reid_threshold=0.6)
    return report.path, write_coco(root / "data")


@pytest.fixture(scope="module")
def quantized(fp32_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model, data = fp32_model
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    return quantize_onnx(
        model, out, data, split="test", tracklets=4, max_frames=4, tracklet_config=SHORT
    )


def test_int8_model_has_its_own_version_and_the_metadata(
    fp32_model: tuple[Path, Path], quantized
) -> None:  # type: ignore[no-untyped-def]
    fp32 = OnnxEncoder(fp32_model[0])
    int8 = OnnxEncoder(quantized.path)
    assert quantized.fp32_version == fp32.version
    assert int8.version == quantized.encoder_version == fp32.version + "+int8"
    assert int8.precision == "int8" and int8.describe()["precision"] == "int8"
    assert (int8.preprocess, int8.fragment, int8.dim) == (fp32.preprocess, fp32.fragment, fp32.dim)
    assert int8.reid_threshold == fp32.reid_threshold
    info = json.loads(int8.metadata["polypindex.quantization"])
    assert info["calibration"] == {"data": "data", "split": "test", "tracklets": 3, "max_frames": 4}
    ops = {n.op_type for n in onnx.load(str(quantized.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


def test_int8_embeddings_close_to_fp32(fp32_model: tuple[Path, Path], quantized) -> None:  # type: ignore[no-untyped-def]
    assert quantized.calibration_tracklets == 3  # all the split has
    assert quantized.min_cosine > 0.95
    fp32, int8 = OnnxEncoder(fp32_model[0]), OnnxEncoder(quantized.path)
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 32, 32)).astype(np.float32)
    cos = np.sum(fp32.embed(x) * int8.embed(x), axis=1)
    assert np.all(cos > 0.9)
    assert not np.array_equal(fp32.embed(x), int8.embed(x))  # really a different graph


def test_calibration_crops_are_the_indexers(fp32_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fp32_model
    encoder = OnnxEncoder(model)
    seqs = calibration_sequences(
        encoder, data, "test", tracklets=2, max_frames=3, tracklet_config=SHORT
    )
    tracklets = load_coco_split(data, "test").tracklets(SHORT)
    first = tracklets[0]
    (crops,) = cached_sequences(
        first,
        [selected_frames(len(first), encoder.fragment)[:3]],
        CropCache(tmp_path, encoder.preprocess),
    )
    np.testing.assert_array_equal(seqs[0], normalize(crops, encoder.preprocess))
    reader = CropCalibrationReader(seqs)
    fed = [reader.get_next() for _ in range(len(seqs) + 1)]
    assert fed[-1] is None and fed[0] is not None and fed[0]["frames"].shape == (1, 3, 3, 32, 32)
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(ConfigError):
        calibration_sequences(encoder, data, "test", tracklets=0, tracklet_config=SHORT)


def test_an_int8_model_is_not_quantised_again(quantized, fp32_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="already int8"):
        quantize_onnx(
            quantized.path, tmp_path / "x.onnx", fp32_model[1], split="test", tracklet_config=SHORT
        )


def _long_tracklet_coco(root: Path, frames: int = 32) -> Path:
    """One sequence, one polyp seen in ``frames`` frames (a default-length tracklet)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for frame in range(frames):
        pixels = rng.integers(0, 80, size=(48, 64, 3), dtype=np.uint8)
        pixels[10:30, 10 + frame // 2 : 30 + frame // 2] = (220, 60, 60)
        name = f"001_{frame:04d}.jpg"
        assert cv2.imwrite(str(root / "images" / name), pixels)
        images.append(
            {
                "id": frame + 1,
                "file_name": name,
                "width": 64,
                "height": 48,
                "frame_id": frame,
                "sequence_id": "001",
                "dataset_id": "ds",
            }
        )
        annotations.append(
            {
                "id": frame + 1,
                "image_id": frame + 1,
                "bbox": [10 + frame // 2, 10, 20, 20],
                "category_id": 1,
                "identity_id": "p1",
            }
        )
    write_coco_json(root, "train", images, annotations)
    return root


def test_cli_export_quantize(fp32_model: tuple[Path, Path], tmp_path: Path) -> None:
    from polypindex.cli import main

    model, _ = fp32_model
    data = _long_tracklet_coco(tmp_path / "calib")
    ckpt = model.parent / "encoder.pt"
    out = tmp_path / "q.onnx"
    args = ["export", str(ckpt), "--out", str(out), "--quantize", "int8"]
    with pytest.raises(SystemExit) as missing:
        main([*args])
    assert missing.value.code == 1 and not out.exists()  # no calibration data: refused
    with pytest.raises(SystemExit) as done:
        main(
            [
                *args,
                "--calibration-data",
                str(data),
                "--calibration-tracklets",
                "3",
            ]
        )
    assert done.value.code == 0
    assert OnnxEncoder(out).version.endswith("+int8")
