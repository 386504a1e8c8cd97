"""An encoded image's size read from its header, before anything is decoded.

A 1 MB PNG of one colour can declare 20000×20000 pixels and decode to 1.2 GB; the
pixel limit is therefore checked on the header alone: PNG (``IHDR``), JPEG (the
first ``SOF`` marker) and BMP. Pure Python, no decoder involved.
"""

from __future__ import annotations

import struct

from polypindex.model.core.errors import ImageReadError

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic, ...);
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than the configured limit (checked before decoding)."""


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by a PNG, JPEG or BMP header; ``None`` for another
    format or a header too damaged to read (the decoder then decides)."""
    if data.startswith(_PNG):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(int(width)), abs(int(height))
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        i += 2 + length
    return None


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` when the header declares over ``max_pixels``."""
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"the image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of "
            f"{max_pixels} pixels (setting max_image_pixels); checked before decoding"
        )
