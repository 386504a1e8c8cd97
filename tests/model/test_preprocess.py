"""The one crop (docs/method.md#the-crop): box enlargement, clamping, resize, normalisation,
cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from polypindex.model.core.errors import ConfigError, ImageReadError, InvalidInputError
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.preprocess import (
    CropCache,
    crop_frame,
    crop_frames,
    decode_image,
    enlarged_box,
    normalize,
    preprocess_frames,
    read_image,
)


def test_enlarged_box_grows_width_height_and_diagonal_by_factor() -> None:
    x0, y0, x1, y1 = enlarged_box([90, 90, 20, 20], 5.0, 1000, 1000)
    assert (x0, y0, x1, y1) == (50, 50, 150, 150)
    # width 20 -> 100, height 20 -> 100: the diagonal grows by the same factor 5
    assert np.hypot(x1 - x0, y1 - y0) == pytest.approx(5 * np.hypot(20, 20))


def test_enlarged_box_is_clamped_to_image() -> None:
    assert enlarged_box([0, 0, 20, 10], 5.0, 64, 48) == (0, 0, 60, 30)
    x0, y0, x1, y1 = enlarged_box([60, 40, 4, 8], 5.0, 64, 48)
    assert x1 == 64 and y1 == 48 and x0 < x1 and y0 < y1


def test_enlarged_box_rejects_empty_box() -> None:
    with pytest.raises(InvalidInputError, match="non-positive"):
        enlarged_box([0, 0, 0, 10], 5.0, 64, 48)


def test_crop_frame_content_and_shape() -> None:
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    img[40:60, 40:60] = (255, 0, 0)  # a red square exactly in the box
    cfg = PreprocessConfig(im_size=50, bbox_scale_factor=2.5)
    crop = crop_frame(img, [40, 40, 20, 20], cfg)
    assert crop.shape == (50, 50, 3) and crop.dtype == np.uint8
    # crop window is 25..75 (50 px) so the square fills the central 20 px at 1:1 scale
    assert tuple(crop[25, 25]) == (255, 0, 0)
    assert tuple(crop[2, 2]) == (0, 0, 0)


def test_normalize_matches_formula_and_layout() -> None:
    cfg = PreprocessConfig(im_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    crops = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    out = normalize(crops, cfg)
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.float32
    for c in range(3):
        expected = (crops[..., c] / 255.0 - cfg.mean[c]) / cfg.std[c]
        np.testing.assert_allclose(out[:, c], expected, atol=1e-5)


def test_normalize_refuses_already_normalised_input() -> None:
    # The double-normalisation pitfall: float input is refused, not normalised twice.
    with pytest.raises(InvalidInputError, match="uint8"):
        normalize(np.zeros((8, 8, 3), dtype=np.float32), PreprocessConfig(im_size=8))


def test_preprocess_frames_equals_crop_then_normalize() -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8) for _ in range(3)]
    boxes = np.array([[10, 10, 8, 8], [20, 15, 10, 6], [70, 50, 9, 9]], dtype=np.float32)
    cfg = PreprocessConfig(im_size=16)
    out = preprocess_frames(imgs, boxes, cfg)
    assert out.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(out, normalize(crop_frames(imgs, boxes, cfg), cfg))


def test_crop_frames_checks_counts() -> None:
    with pytest.raises(InvalidInputError, match="2 frames but 1 boxes"):
        crop_frames(
            [np.zeros((8, 8, 3), np.uint8)] * 2, np.zeros((1, 4)), PreprocessConfig(im_size=8)
        )
    with pytest.raises(InvalidInputError, match="at least one frame"):
        crop_frames([], np.zeros((0, 4)), PreprocessConfig(im_size=8))


def test_crop_frame_rejects_wrong_image() -> None:
    with pytest.raises(InvalidInputError, match="RGB uint8"):
        crop_frame(np.zeros((8, 8), np.uint8), [0, 0, 2, 2], PreprocessConfig(im_size=8))


def test_read_and_decode_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageReadError, match=r"bad\.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="empty"):
        decode_image(b"")


def test_read_image_returns_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), bgr)
    rgb = read_image(path)
    assert rgb.shape == (10, 12, 3) and rgb[0, 0, 0] == 200 and rgb[0, 0, 2] == 0


def test_crop_cache_hits_and_invalidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    paths = []
    for i in range(2):
        p = tmp_path / f"f{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
        paths.append(str(p))
    boxes = np.array([[10, 10, 6, 6], [12, 12, 6, 6]], dtype=np.float32)
    cache = CropCache(tmp_path / "cache", PreprocessConfig(im_size=16))
    first = cache.get(paths, boxes)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    np.testing.assert_array_equal(first, cache.get(paths, boxes))
    np.testing.assert_array_equal(
        first, crop_frames([read_image(p) for p in paths], boxes, cache.config)
    )
    # other boxes or other settings -> other entries
    cache.get(paths, boxes + 1)
    CropCache(tmp_path / "cache", PreprocessConfig(im_size=8)).get(paths, boxes)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    with pytest.raises(ImageReadError, match="not found"):
        cache.get([str(tmp_path / "nope.png")], boxes[:1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"im_size": 4}, "im_size"),
        ({"bbox_scale_factor": 0}, "bbox_scale_factor"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
    ],
)
def test_preprocess_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def test_preprocess_config_round_trip() -> None:
    cfg = PreprocessConfig(im_size=64, bbox_scale_factor=3.0)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        PreprocessConfig.from_dict({"im_sz": 3})
