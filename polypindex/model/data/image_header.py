"""An encoded image's size read from its header, before anything is decoded.

A 1 MB PNG of one colour can declare 20000×20000 pixels and decode to 1.2 GB (an
11 kB TIFF, a 35-byte GIF or a 38-byte WebP as much); the pixel limit is therefore
checked on the header alone, for every format the decoder (OpenCV) reads here:

- PNG (``IHDR``); JPEG (the first ``SOF`` marker);
- BMP, Windows (``BITMAPINFOHEADER`` and later, signed 32-bit sizes) and OS/2
  (the 12-byte ``BITMAPCOREHEADER``, unsigned 16-bit sizes; the 16- and 64-byte
  OS/2 2.x headers, 32-bit);
- TIFF and BigTIFF (``ImageWidth``/``ImageLength`` of the first directory, the page
  the decoder reads); GIF (the logical screen, grown to the first image's extent);
- WebP (``VP8 ``, ``VP8L`` and the ``VP8X`` canvas); JPEG 2000 (a ``.jp2`` file's
  ``ihdr`` box, or a raw codestream's ``SIZ`` segment); PBM, PGM and PPM (``P1``-``P6``).

Anything else, or a header too damaged to read, has no size here: a caller with a
pixel limit refuses it before decoding (:func:`check_pixels`). Pure Python, no
decoder involved.
"""

from __future__ import annotations

import struct

from polypindex.model.core.errors import ImageReadError

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic, ...);
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K = b"\xff\x4f\xff\x51"  # SOC then SIZ
# The formats :func:`image_size` reads, for messages.
FORMATS = "PNG, JPEG, BMP, TIFF, GIF, WebP, JPEG 2000 or PNM"
MAX_IMAGE_PIXELS = 25_000_000
"""The default pixel limit (the service's ``max_image_pixels``): 25 MP, 75 MB decoded."""


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than the configured limit (checked before decoding)."""


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by the header of a format listed in the module's
    docstring; ``None`` for another format or a header too damaged to read."""
    try:
        return _size(data)
    except (struct.error, IndexError):  # a header cut short
        return None


def _size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(_PNG):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"BM"):
        return _bmp_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(_JP2):
        return _jp2_size(data)
    if data.startswith(_J2K):
        return _j2k_size(data, 0)
    if len(data) > 2 and data[0] == 0x50 and 0x31 <= data[1] <= 0x36 and data[2] in b" \t\r\n#":
        return _pnm_size(data)
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    """Width and height: the first two numbers after the magic, ``#`` comments skipped."""
    numbers: list[int] = []
    for line in data[2:512].split(b"\n"):
        for token in line.split(b"#", 1)[0].split():
            if not token.isdigit():
                return None
            numbers.append(int(token))
            if len(numbers) == 2:
                return numbers[0], numbers[1]
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


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 1.x BITMAPCOREHEADER: unsigned 16-bit width and height
        width, height = struct.unpack("<HH", data[18:22])
        return int(width), int(height)
    if header >= 16:  # OS/2 2.x, BITMAPINFOHEADER and its successors: signed 32-bit
        width, height = struct.unpack("<ii", data[18:26])
        return abs(int(width)), abs(int(height))
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:  # BigTIFF: 8-byte offsets, counts and values
        (offset,) = struct.unpack(end + "Q", data[8:16])
        (count,) = struct.unpack(end + "Q", data[offset : offset + 8])
        first, size = offset + 8, 20
    else:
        (offset,) = struct.unpack(end + "I", data[4:8])
        (count,) = struct.unpack(end + "H", data[offset : offset + 2])
        first, size = offset + 2, 12
    found: dict[int, int] = {}
    for k in range(min(int(count), 4096)):
        entry = data[first + k * size : first + (k + 1) * size]
        tag, kind = struct.unpack(end + "HH", entry[:4])
        if tag not in (256, 257):  # ImageWidth, ImageLength
            continue
        value = entry[12:] if big else entry[8:]
        if kind == 3:  # SHORT
            (found[tag],) = struct.unpack(end + "H", value[:2])
        elif kind == 4:  # LONG
            (found[tag],) = struct.unpack(end + "I", value[:4])
        elif kind == 16 and big:  # LONG8
            (found[tag],) = struct.unpack(end + "Q", value[:8])
        else:
            return None
        if len(found) == 2:
            return int(found[256]), int(found[257])
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    width, height, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)  # the global colour table
    while i < len(data):
        block = data[i]
        if block == 0x2C:  # the first image descriptor: its extent may exceed the screen
            left, top, w, h = struct.unpack("<HHHH", data[i + 1 : i + 9])
            return max(int(width), left + w), max(int(height), top + h)
        if block != 0x21:  # the trailer, or not GIF: the screen is all there is
            break
        i += 2  # an extension: introducer and label, then its sub-blocks
        while data[i]:
            i += data[i] + 1
        i += 1
    return int(width), int(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return int(width & 0x3FFF), int(height & 0x3FFF)
    if chunk == b"VP8L":  # lossless: a signature byte, then 14-bit sizes minus one
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return int((bits & 0x3FFF) + 1), int(((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sizes minus one
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _jp2_size(data: bytes) -> tuple[int, int] | None:
    i, n = 0, len(data)
    while i + 8 <= n:
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        head = 8
        if length == 1:  # a 64-bit length follows
            (length,) = struct.unpack(">Q", data[i + 8 : i + 16])
            head = 16
        elif length == 0:  # the box runs to the end of the file
            length = n - i
        if kind == b"jp2h":  # the header superbox: its first box is ihdr
            inner = i + head
            if data[inner + 4 : inner + 8] != b"ihdr":
                return None
            height, width = struct.unpack(">II", data[inner + 8 : inner + 16])
            return int(width), int(height)
        if kind == b"jp2c":  # the codestream before any header box
            return _j2k_size(data, i + head)
        if length < head:
            return None
        i += length
    return None


def _j2k_size(data: bytes, at: int) -> tuple[int, int] | None:
    if data[at : at + 4] != _J2K:
        return None
    x, y, x0, y0 = struct.unpack(">IIII", data[at + 8 : at + 24])
    if x < x0 or y < y0:
        return None
    return int(x - x0), int(y - y0)


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse, before decoding, an image over ``max_pixels`` or with no size here.

    Raises:
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        ImageReadError: not one of :data:`FORMATS`, or a header too damaged to read.
    """
    size = image_size(data)
    if size is None:
        raise ImageReadError(
            f"not a decodable {FORMATS} image (unknown format or damaged header); "
            "refused before decoding"
        )
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"the image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of "
            f"{max_pixels} pixels (setting max_image_pixels); checked before decoding"
        )
