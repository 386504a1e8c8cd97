"""Small files that declare huge images (decompression bombs), written by the suite itself.

Each is a valid file of its format whose header declares ``side`` × ``side`` pixels
(default 20000², 1.2 GB once decoded as RGB) in a few bytes to a few hundred kB: what
the pixel limit must refuse from the header (:mod:`polypindex.model.data.image_header`).
"""

from __future__ import annotations

import struct
import zlib

SIDE = 20000
_ZEROS = b"\x00" * (1 << 24)


def _zeros_deflated(n: int, level: int = 9) -> bytes:
    """``n`` zero bytes, zlib-compressed (about n / 1000 bytes)."""
    z = zlib.compressobj(level)
    parts = [z.compress(_ZEROS) for _ in range(n // len(_ZEROS))]
    parts.append(z.compress(_ZEROS[: n % len(_ZEROS)]))
    parts.append(z.flush())
    return b"".join(parts)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(side: int = SIDE) -> bytes:
    """A valid black RGB PNG of ``side``² pixels (a 20000² one is about 1.2 MB)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    raw = side * (1 + 3 * side)  # a filter byte (0) and black pixels, row after row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", _zeros_deflated(raw))
        + _png_chunk(b"IEND", b"")
    )


def tiff(side: int = SIDE) -> bytes:
    """A valid black 8-bit grey TIFF of ``side``² pixels in one Deflate strip."""
    strip = _zeros_deflated(side * side)
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, side),  # ImageWidth
        (257, 4, side),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 8),  # Compression: Deflate
        (262, 3, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 0),  # StripOffsets (patched below)
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, side),  # RowsPerStrip
        (279, 4, len(strip)),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def gif(side: int = SIDE) -> bytes:
    """A 35-byte GIF whose logical screen is ``side``² (one 1×1 image on it); OpenCV
    decodes the whole screen (a 20000² one: 1.2 GB)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00" * 6
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def _lsb_bits(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        out[i // 8] |= bit << (i % 8)
    return bytes(out)


def webp(side: int = 16383) -> bytes:
    """A 32-byte lossless WebP (``VP8L``) of ``side``² black pixels (WebP's maximum is
    16383): five one-symbol prefix codes, so every pixel takes no bits at all."""

    def number(value: int, n: int) -> list[int]:
        return [(value >> i) & 1 for i in range(n)]

    size = number(side - 1, 14) + number(side - 1, 14) + [0] + number(0, 3)  # no alpha, v0
    no_extras = [0, 0, 0]  # no transform, no colour cache, no meta prefix codes
    one_symbol = [1, 0, 0, 0]  # a simple code: one symbol, 1 bit wide, symbol 0
    data = b"\x2f" + _lsb_bits(size + no_extras + one_symbol * 5) + b"\x00" * 4
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def os2_bmp(width: int = SIDE, height: int = SIDE) -> bytes:
    """An OS/2 1.x bitmap (12-byte ``BITMAPCOREHEADER``, 24-bit) of ``width`` × ``height``
    declared, with the first row of pixels only."""
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    pixels = b"\x00" * ((3 * width + 3) // 4 * 4)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def j2k_header(width: int = SIDE, height: int = SIDE) -> bytes:
    """A raw JPEG 2000 codestream's ``SOC`` and ``SIZ`` (one 8-bit component), no data."""
    siz = struct.pack(">HIIIIIIIIH", 0, width, height, 0, 0, width, height, 0, 0, 1)
    siz += b"\x07\x01\x01"
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz
