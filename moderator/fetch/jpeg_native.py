"""Plain still JPEGs decoded by libjpeg-turbo straight from the bytes (simplejpeg), not by Pillow.

Pillow parses a JPEG's markers in Python before its C decoder runs: for the small images most
uploads are, that parsing costs more than the pixels. Here the header is walked once for the few
facts the decode needs, and the pixels come out of one C call, already scaled by the IDCT when
the engine wants a smaller image.

Only plain files take this way: 8-bit baseline or progressive Huffman JPEGs in grey or YCbCr,
with at most an EXIF orientation, and no multi-picture (MPF) or XMP segment (Pillow reads an
orientation from XMP too). Anything else, and any file the native decoder reports a problem
with, goes through Pillow, so a file gets the same verdict or error either way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import simplejpeg
from PIL import Image

from moderator.fetch import pixels

MAX_PIXELS = 2_000_000
"""Larger JPEGs go to Pillow: the entropy decoding outweighs Pillow's parsing there, and at the
same IDCT scale Pillow's libjpeg-turbo decoded 5-7% faster (bench/decode_bench.py)."""

_SOF_SEQUENTIAL = frozenset({0xC0, 0xC1})
_SOF_PROGRESSIVE = 0xC2
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Lossless, hierarchical and arithmetic-coded frames: rare, left to Pillow."""
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI, _APP1, _APP2 = 0xDA, 0xD9, 0xE1, 0xE2
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_MPF = b"MPF\x00"
_ORIENTATION_TAG = 0x0112
_MODES = {"Gray": ("GRAY", "L"), "YCbCr": ("RGBX", "RGBX")}
"""simplejpeg's name of the file's colour space -> the layout to decode to, its Pillow mode.
Both are layouts Pillow stores as they are, so it maps the decoded array instead of copying it."""


@dataclass(frozen=True)
class JpegHeader:
    """What the decode needs from a plain JPEG's markers, read before the first scan."""

    width: int
    height: int
    components: int
    progressive: bool
    orientation: int  # EXIF orientation, 1 when there is none


def read_header(data: bytes) -> JpegHeader | None:
    """The header of a plain still JPEG, or None when Pillow should decode `data` instead."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos, end = 2, len(data)
    frame: tuple[int, int, int, bool] | None = None
    orientation: int | None = 1
    exif_seen = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI):
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body, stop = pos + 4, pos + 2 + length
        if length < 2 or stop > end or _for_pillow(data, marker, body):
            return None
        if marker in _SOF_SEQUENTIAL or marker == _SOF_PROGRESSIVE:
            frame = _frame(data, body, stop, progressive=marker == _SOF_PROGRESSIVE)
            if frame is None:
                return None
        elif marker == _APP1 and data.startswith(_EXIF, body) and not exif_seen:
            exif_seen = True
            orientation = _orientation(data[body + len(_EXIF) : stop])
        if orientation is None:
            return None
        pos = stop
    if frame is None or orientation is None or pos + 2 > end or data[pos + 1] != _SOS:
        return None
    width, height, components, progressive = frame
    return JpegHeader(width, height, components, progressive, orientation)


def _for_pillow(data: bytes, marker: int, body: int) -> bool:
    """Whether a segment makes the file one to leave to Pillow."""
    if marker in _SOF_OTHER:
        return True
    if marker == _APP1:
        return data.startswith(_XMP, body)
    return marker == _APP2 and data.startswith(_MPF, body)


def _frame(
    data: bytes, body: int, stop: int, *, progressive: bool
) -> tuple[int, int, int, bool] | None:
    if stop - body < 6:
        return None
    precision, height, width, components = struct.unpack_from(">BHHB", data, body)
    if precision != 8 or not height or not width or components not in (1, 3):
        return None
    return width, height, components, progressive


def _orientation(tiff: bytes) -> int | None:
    """The orientation tag of an EXIF block's first IFD: 1 without one, None if unreadable."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    magic, first = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or first + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, first)
    for entry in range(first + 2, first + 2 + 12 * count, 12):
        if entry + 12 > len(tiff):
            return None
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION_TAG:
            if kind != 3 or n != 1:  # not one SHORT: leave it to Pillow's reading
                return None
            value: int = struct.unpack_from(order + "H", tiff, entry + 8)[0]
            return value
    return 1


def _wanted(header: JpegHeader, target: int | None) -> tuple[int, int]:
    """The least width and height to decode at: the engine's size (0, 0: full size)."""
    return (0, 0) if target is None else pixels.fit((header.width, header.height), target)


def scaled_shape(
    data: bytes, header: JpegHeader, target: int | None
) -> tuple[int, int, str] | None:
    """The size the decode will produce and its Pillow mode; None when the decoder refuses.

    With a `target`, libjpeg-turbo scales in its IDCT by the smallest of its factors (1/8 to
    1, in eighths) that keeps the image at least as large as the engine's size.
    """
    want = _wanted(header, target)
    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(
            data, min_height=want[1], min_width=want[0]
        )
    except ValueError:
        return None
    if space not in _MODES:
        return None
    return width, height, _MODES[space][1]


def decode_frame(
    data: bytes,
    header: JpegHeader,
    target: int | None,
    checkpoint: Callable[[str], None],
) -> Image.Image | None:
    """The engine's RGB frame, upright and within `target`; None when the decoder refuses."""
    want = _wanted(header, target)
    space, mode = _MODES["Gray" if header.components == 1 else "YCbCr"]
    try:
        array = simplejpeg.decode_jpeg(data, space, min_height=want[1], min_width=want[0])
    except ValueError:  # a libjpeg warning or error: Pillow decides what the bytes are
        return None
    checkpoint("after decoding a frame")
    height, width = array.shape[:2]
    decoded = Image.frombuffer(mode, (width, height), array, "raw", mode, 0, 1)
    return pixels.engine_frame(decoded, header.orientation, target, checkpoint)
