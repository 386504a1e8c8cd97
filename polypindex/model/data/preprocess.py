"""The one preprocessing implementation (docs/method.md#the-crop), numpy + OpenCV only.

Training, indexing and the service all call these functions, so the same frame
and box give the same array everywhere. The encoder (torch or ONNX) takes the
output of :func:`normalize`: float32 ``[..., 3, H, W]``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from polypindex.model.core.errors import ImageReadError, InvalidInputError
from polypindex.model.core.files import atomic_write
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.data.image_header import MAX_IMAGE_PIXELS, check_pixels


def read_image(path: str | Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)``; raise ImageReadError naming the file.

    Args:
        path: the image file.
        max_pixels: the pixel limit checked on its header before decoding (see
            :func:`decode_image`); default the service's default ``max_image_pixels``,
            so a frame of a source being indexed or shown is bounded like a query's.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"image file not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    try:
        return decode_image(data.tobytes(), max_pixels=max_pixels)
    except ImageReadError as exc:  # ImageTooLargeError stays one
        raise type(exc)(f"cannot decode image {p}: {exc}") from exc


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB uint8 ``(H, W, 3)``.

    Args:
        data: the encoded image.
        max_pixels: when given, only an image whose header (one of
            :data:`~polypindex.model.data.image_header.FORMATS`) declares at most this
            many pixels is decoded: ImageTooLargeError over it, ImageReadError for a
            format or a header not read there, both before decoding.
    """
    if not data:
        raise ImageReadError("empty image data")
    if max_pixels is not None:
        check_pixels(data, max_pixels)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. over OpenCV's own pixel limit (CV_IO_MAX_IMAGE_PIXELS)
        raise ImageReadError(
            "cannot decode the image (damaged or over the decoder's limits)"
        ) from exc
    if img is None or img.size == 0:
        raise ImageReadError("not a decodable image (corrupt or unsupported format)")
    return np.ascontiguousarray(img[:, :, ::-1])


def enlarged_box(
    bbox: Sequence[float] | np.ndarray, scale: float, image_width: int, image_height: int
) -> tuple[int, int, int, int]:
    """The crop window: the box grown ``scale``× in width and height about its centre,
    clamped to the image.

    Returns:
        Integer pixel bounds ``(x0, y0, x1, y1)``, exclusive ends, at least 1 px wide/high.
    """
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise InvalidInputError(f"box {list(bbox)} has non-positive width or height")
    cx, cy = x + w / 2.0, y + h / 2.0
    half_w, half_h = w * scale / 2.0, h * scale / 2.0
    x0 = int(np.clip(np.floor(cx - half_w), 0, image_width - 1))
    y0 = int(np.clip(np.floor(cy - half_h), 0, image_height - 1))
    x1 = int(np.clip(np.ceil(cx + half_w), x0 + 1, image_width))
    y1 = int(np.clip(np.ceil(cy + half_h), y0 + 1, image_height))
    return x0, y0, x1, y1


def crop_frame(
    image: np.ndarray, bbox: Sequence[float] | np.ndarray, config: PreprocessConfig
) -> np.ndarray:
    """Crop one frame around its box and resize to ``im_size``².

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        bbox: ``[x, y, w, h]`` in pixels.
        config: crop settings.

    Returns:
        RGB uint8 ``(im_size, im_size, 3)``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    x0, y0, x1, y1 = enlarged_box(bbox, config.bbox_scale_factor, width, height)
    patch = image[y0:y1, x0:x1]
    size = config.im_size
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def normalize(crops: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 RGB crops ``[..., H, W, 3]`` → float32 ``[..., 3, H, W]``, scaled to [0, 1]
    and normalised with the config's mean and std."""
    if crops.dtype != np.uint8:
        raise InvalidInputError(f"normalize expects uint8 crops, got {crops.dtype}")
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    x: np.ndarray = (crops.astype(np.float32) * scale - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3), dtype=np.float32)


def crop_frames(
    images: Sequence[np.ndarray], boxes: np.ndarray, config: PreprocessConfig
) -> np.ndarray:
    """Crop every frame of a sequence: returns uint8 ``(S, im_size, im_size, 3)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(images) != len(boxes):
        raise InvalidInputError(f"{len(images)} frames but {len(boxes)} boxes")
    if len(images) == 0:
        raise InvalidInputError("a tracklet needs at least one frame")
    return np.stack([crop_frame(img, box, config) for img, box in zip(images, boxes, strict=True)])


def preprocess_frames(
    images: Sequence[np.ndarray], boxes: np.ndarray, config: PreprocessConfig
) -> np.ndarray:
    """Frames + boxes → the encoder's input for one tracklet, float32 ``(S, 3, H, W)``."""
    return normalize(crop_frames(images, boxes, config), config)


class CropCache:
    """On-disk cache of a tracklet's uint8 crops, so training epochs and repeated
    evaluations do not decode and crop full frames again.

    The key hashes the image paths, their sizes and modification times, the boxes
    and the crop settings, so a changed frame or setting never returns a stale crop.
    """

    def __init__(self, directory: str | Path, config: PreprocessConfig) -> None:
        self.directory = Path(directory)
        self.config = config
        self.directory.mkdir(parents=True, exist_ok=True)

    def key(self, image_paths: Sequence[str], boxes: np.ndarray) -> str:
        h = hashlib.sha256()
        h.update(self.config.to_json().encode())
        for p in image_paths:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(np.ascontiguousarray(np.asarray(boxes, dtype=np.float64)).tobytes())
        return h.hexdigest()[:32]

    def get(self, image_paths: Sequence[str], boxes: np.ndarray) -> np.ndarray:
        """Return uint8 crops ``(S, im_size, im_size, 3)`` for these frames, computing
        and storing them on a miss."""
        try:
            path = self.directory / f"{self.key(image_paths, boxes)}.npy"
        except FileNotFoundError as exc:
            raise ImageReadError(f"image file not found: {exc.filename}") from exc
        if path.exists():
            try:
                return np.load(path)
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn write: recompute below
        crops = crop_frames([read_image(p) for p in image_paths], boxes, self.config)
        atomic_write(path, lambda fh: np.save(fh, crops), durable=False)
        return crops
