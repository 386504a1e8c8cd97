"""The pixel limit read from the header of every format the decoder reads (issue 24)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import bombs

from polypindex.model.core.errors import ImageReadError
from polypindex.model.data.image_header import ImageTooLargeError, check_pixels, image_size
from polypindex.model.data.preprocess import decode_image, read_image

WIDTH, HEIGHT = 97, 61


def encoded(ext: str, params: list[int] | None = None, grey: bool = False) -> bytes:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[10:30, 20:70] = (200, 90, 40)
    ok, buf = cv2.imencode(ext, image[:, :, 0] if grey else image, params or [])
    assert ok, ext
    return bytes(buf.tobytes())


@pytest.mark.parametrize(
    ("ext", "params", "grey"),
    [
        (".png", None, False),
        (".jpg", None, False),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], False),
        (".bmp", None, False),
        (".tif", None, False),
        (".tif", [cv2.IMWRITE_TIFF_COMPRESSION, 1], False),
        (".gif", None, False),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], False),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], False),  # lossless: VP8L
        (".jp2", None, False),
        (".ppm", None, False),
        (".pgm", None, True),
    ],
)
def test_the_size_of_a_real_file_of_each_format(
    ext: str, params: list[int] | None, grey: bool
) -> None:
    data = encoded(ext, params, grey)
    assert image_size(data) == (WIDTH, HEIGHT)
    check_pixels(data, WIDTH * HEIGHT)  # at the limit: decodes
    assert decode_image(data, max_pixels=WIDTH * HEIGHT).shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(ImageTooLargeError, match=f"{WIDTH}x{HEIGHT}"):
        check_pixels(data, WIDTH * HEIGHT - 1)


def test_an_os2_bitmap_header_is_read_as_16_bit_sizes() -> None:
    small = bombs.os2_bmp(WIDTH, 1)
    assert image_size(small) == (WIDTH, 1)
    assert decode_image(small, max_pixels=WIDTH).shape == (1, WIDTH, 3)  # OpenCV reads it too
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        decode_image(bombs.os2_bmp(), max_pixels=25_000_000)


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (bombs.gif, (20000, 20000)),
        (bombs.webp, (16383, 16383)),
        (bombs.os2_bmp, (20000, 20000)),
        (bombs.j2k_header, (20000, 20000)),
    ],
)
def test_tiny_bombs_are_refused_from_their_header(make: object, size: tuple[int, int]) -> None:
    data = make()  # type: ignore[operator]
    assert len(data) < 100_000
    assert image_size(data) == size
    with pytest.raises(ImageTooLargeError, match="checked before decoding"):
        decode_image(data, max_pixels=25_000_000)


def test_a_gif_image_wider_than_its_screen_counts_its_extent() -> None:
    data = bytearray(bombs.gif(10))
    data[13 + 6 + 5 : 13 + 6 + 7] = struct.pack("<H", 5000)  # the first image's width
    assert image_size(bytes(data)) == (5000, 10)


@pytest.mark.parametrize(
    "data",
    [
        b"hello, not an image",
        b"\x89PNG\r\n\x1a\n\x00\x00",  # a PNG cut inside its header
        b"II*\x00\xff\xff\x00\x00",  # a TIFF whose directory lies past the end
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",  # a WebP chunk with no frame
        b"P6\n#comment only",
    ],
)
def test_an_unknown_or_damaged_header_is_refused_before_decoding(data: bytes) -> None:
    assert image_size(data) is None
    with pytest.raises(ImageReadError, match="refused before decoding") as info:
        decode_image(data, max_pixels=25_000_000)
    assert not isinstance(info.value, ImageTooLargeError)


def test_read_image_checks_the_limit_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "frame_7.gif"
    path.write_bytes(bombs.gif())
    with pytest.raises(ImageTooLargeError, match=r"frame_7\.gif.*max_image_pixels"):
        read_image(path)  # the default limit: the service's default max_image_pixels
    small = tmp_path / "frame_8.gif"
    small.write_bytes(encoded(".gif"))
    assert read_image(small).shape == (HEIGHT, WIDTH, 3)


def test_tiff_bomb_declares_its_size_in_a_few_hundred_kb() -> None:
    data = bombs.tiff(4000)
    assert len(data) < 100_000
    assert image_size(data) == (4000, 4000)
    assert decode_image(data).shape == (4000, 4000, 3)  # a valid file: it does decode
