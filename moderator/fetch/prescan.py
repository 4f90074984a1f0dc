"""Bounded walks over a file's structure before Pillow parses it: Pillow's own walks are
Python loops (or, for JPEG scans, libjpeg passes) whose cost grows with the count, not the pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class GifLayout:
    frames: int  # image descriptors seen (stops counting past the caller's limit)
    width: int  # the canvas once every frame is placed: Pillow grows the logical screen to fit
    height: int


def scan_gif(data: bytes, max_frames: int) -> GifLayout | None:
    """The layout of a GIF, or None when `data` is not one. Stops after `max_frames` + 1 frames.

    Pillow walks every frame in Python to count them, and grows the canvas only as it reaches a
    frame that sticks out of the logical screen; this bounded walk gives both before any of that.
    Like Pillow, it skips bytes it does not know and ends at the trailer or the end of the data.
    """
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    end = len(data)
    while pos < end and frames <= max_frames:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            pos = _skip_blocks(data, pos + 2)
        elif kind == 0x2C:  # image descriptor
            if pos + 10 > end:
                break
            x, y, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _skip_blocks(data, pos + 1)  # after the LZW minimum code size
            frames += 1
            width, height = max(width, x + w), max(height, y + h)
        else:
            pos += 1
    return GifLayout(frames, width, height)


def _skip_blocks(data: bytes, pos: int) -> int:
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def count_png_chunks(data: bytes, limit: int) -> int:
    """How many chunks a PNG holds, counting no further than `limit` + 1 (0 if not a PNG)."""
    if not data.startswith(PNG_SIGNATURE):
        return 0
    pos, count, end = len(PNG_SIGNATURE), 0, len(data)
    while pos + 8 <= end and count <= limit:
        (length,) = struct.unpack_from(">I", data, pos)
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return count


def count_jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG: libjpeg passes over the whole image once per scan.

    Entropy-coded data never holds 0xFF 0xDA (a 0xFF there is stuffed with 0x00), so this
    counts every scan, plus any in embedded thumbnails or metadata: never fewer.
    """
    return max(1, data.count(b"\xff\xda"))
