"""What a file's first bytes say, read without running a Pillow plugin: the format of bytes
refused by the allowlist (for its message), and the frame count an APNG declares.

A plugin outside the allowlist is never run, not even on its header: parsing headers is where
plugins have had their denial-of-service bugs, and refused bytes are the attacker's choice.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from PIL import Image

from moderator.fetch.prescan import PNG_SIGNATURE

_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_BITS_PER_PIXEL = frozenset({1, 2, 4, 8, 16, 24, 32})
_XBM_WIDTH = re.compile(rb"\s*#define[ \t]+[^\r\n]*_width[ \t]+[0-9]+")


def accepts(accept: Callable[[bytes], bool | str], prefix: bytes) -> bool:
    """Whether a plugin's sniffer claims `prefix` outright (not just "maybe")."""
    try:
        return accept(prefix) is True
    except (IndexError, TypeError, struct.error):  # short prefixes trip some sniffers
        return False


def recognised_format(data: bytes) -> str | None:
    """The Pillow format whose sniffer claims `data` and whose header bears the claim out."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if accept is not None and accepts(accept, prefix) and _confirmed(name, data):
            return name
    return None


def _confirmed(name: str, data: bytes) -> bool:
    check = _STRUCTURE.get(name)
    try:
        return check is None or check(data)
    except (IndexError, struct.error):  # a header cut short is no proof
        return False


def _icon_directory(data: bytes) -> bool:
    """ICO and CUR: a non-empty directory whose first entry points at bytes after it.

    Their sniffers match 4 bytes that a TGA header (and much else) starts with too.
    """
    count: int = struct.unpack_from("<H", data, 4)[0]
    size, offset = struct.unpack_from("<II", data, 14)
    table_end = 6 + 16 * count
    return count > 0 and size > 0 and table_end <= offset and offset + size <= len(data)


def _dib(data: bytes, at: int = 0) -> bool:
    """A bitmap info header at `at`: one plane and a bit depth BMP knows."""
    (size,) = struct.unpack_from("<I", data, at)
    if size not in _DIB_HEADER_SIZES:
        return False
    planes, bits = struct.unpack_from("<HH", data, at + (8 if size == 12 else 12))
    return planes == 1 and bits in _BITS_PER_PIXEL


def _pcx(data: bytes) -> bool:
    """Run-length encoding (the only one PCX has), a known depth and a non-empty box."""
    xmin, ymin, xmax, ymax = struct.unpack_from("<4H", data, 4)
    box = xmax >= xmin and ymax >= ymin
    return len(data) >= 128 and data[2] == 1 and data[3] in (1, 2, 4, 8) and box


def _sgi(data: bytes) -> bool:
    storage, depth = data[2], data[3]
    (dimension,) = struct.unpack_from(">H", data, 4)
    return len(data) >= 512 and storage in (0, 1) and depth in (1, 2) and dimension in (1, 2, 3)


def _gbr(data: bytes) -> bool:
    """A GIMP brush header, checked as Pillow checks it."""
    header, version, width, height, depth = struct.unpack_from(">5I", data, 0)
    if header < 20 or version not in (1, 2) or width == 0 or height == 0 or depth not in (1, 4):
        return False
    return version == 1 or data[20:24] == b"GIMP"


_STRUCTURE: dict[str, Callable[[bytes], bool]] = {
    # Sniffers that check only 2 to 4 bytes, which other files share: the claim must be borne
    # out by the header's structure. The others check a long magic and are taken at their word.
    "BMP": lambda data: _dib(data, 14),
    "CUR": _icon_directory,
    "DIB": _dib,
    "GBR": _gbr,
    "ICO": _icon_directory,
    "PCX": _pcx,
    "PPM": lambda data: re.match(rb"P[1-6f]\s", data) is not None,
    "SGI": _sgi,
    "WMF": lambda data: data.startswith(b"\xd7\xcd\xc6\x9a") or data[40:44] == b" EMF",
    "XBM": lambda data: _XBM_WIDTH.match(data[:512]) is not None,
}


def apng_frames(data: bytes) -> int | None:
    """The frame count in a PNG's acTL chunk; None when no acTL comes before the image data.

    Pillow quietly ignores a count of 0 or over 2**31 (a still image) and counts one frame
    more than declared when the still image is not the first frame: what the file claims is
    read here. The caller has bounded the chunks to walk.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            return None
        if kind == b"acTL" and length >= 8 and pos + 16 <= end:  # else Pillow reports it cut
            return int(struct.unpack_from(">I", data, pos + 8)[0])
        pos += 12 + length
    return None
