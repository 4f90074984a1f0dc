"""The peak memory one decode needs, worked out from the parsed header before any pixel (pure).

Pillow keeps every image in its own buffers outside the Python heap, so this is an account of
what decode_image makes Pillow allocate: the decode buffer, the decoder's working memory, the
copies made while converting to RGB, and the frames kept. Pillow stores 1, L and P images with
one byte per pixel, 16-bit grey with two, and every other mode (RGB included) with four.
The factors were measured (peak RSS of one decode in a fresh process, `bench/decode_bench.py
--memory`) and rounded up; tests/test_decode_cost.py checks the estimate against the same
measurement for the costliest cases.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
SLACK_BYTES = 2 * MiB
"""Per decode, beside the pixel buffers: decoder state, row buffers, Python objects."""
MARGIN = 1.1
"""On top of the measured factors: allocator rounding, other Pillow versions."""

WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
SHRINK_FIRST = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"} | WIDE_MODES)
"""Modes decode_image downscales before converting to RGB (so the conversions are small)."""
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# Bytes per canvas pixel a GIF or APNG animation keeps while frames are composited, on top of
# the frame being decoded: the previous canvas, the disposal area, the new frame in RGB(A).
_COMPOSITING = {"GIF": 8, "PNG": 10}
# Pillow decodes every WebP file (still or animated) through libwebp's animation decoder, which
# keeps canvases of its own and hands Pillow a copy of each frame; the file is copied in too.
_WEBP_DECODER = 12
_WEBP_INPUT_COPIES = 2
# libtiff may decode a strip or tile into a buffer of its own (JPEG-in-TIFF, YCbCr as RGBA).
_TIFF_DECODER = 4


@dataclass(frozen=True)
class FrameShape:
    """One frame as it will be decoded: its size (after JPEG draft) and Pillow mode."""

    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodePlan:
    """What decode_image is about to decode, from the header alone.

    `frames` are the frames to be kept (for an animation composited on a canvas: the canvas, in
    the mode later frames are composited in). `source_pixels` and `components` describe a
    progressive JPEG, whose decoder keeps every coefficient of the full-size image whatever the
    draft scale.
    """

    format: str
    frames: tuple[FrameShape, ...]
    target: int | None
    object_bytes: int
    composited: bool = False
    progressive_pixels: int = 0
    components: int = 3
    rle: bool = False


def stored_bytes_per_pixel(mode: str) -> int:
    """How many bytes Pillow stores per pixel of an image in `mode`."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def peak_bytes(plan: DecodePlan) -> int:
    """A conservative bound on the bytes decode_image allocates at once for `plan`."""
    kept = _kept_frame_bytes(plan)
    work = max(_frame_work(f, plan.target) for f in plan.frames)
    largest = max(f.pixels for f in plan.frames)
    extra = SLACK_BYTES
    if plan.format == "WEBP":
        extra += _WEBP_DECODER * largest + _WEBP_INPUT_COPIES * plan.object_bytes
    elif plan.composited:
        extra += _COMPOSITING.get(plan.format, 10) * largest
    if plan.format == "TIFF":
        extra += _TIFF_DECODER * largest
    if plan.format == "BMP" and plan.rle:
        extra += 2 * largest  # Pillow's RLE decoder builds the image in a bytearray, then copies
    if plan.progressive_pixels:
        extra += 2 * plan.components * plan.progressive_pixels
    return int((kept + work + extra) * MARGIN)


def _frame_work(frame: FrameShape, target: int | None) -> int:
    """Peak bytes while one frame is decoded and turned into an RGB frame (the frame kept aside)."""
    px, mode = frame.pixels, frame.mode
    buffer = px * stored_bytes_per_pixel(mode)
    if target is not None and mode in SHRINK_FIRST:
        # A widened copy for resampling (1 -> L, P -> RGB(A), 16-bit -> 32-bit), and Pillow's
        # premultiplied copy when the image has alpha; then only target-sized images.
        widen = px if mode == "1" else 4 * px if mode in ("P", "PA") or mode in WIDE_MODES else 0
        premultiply = 4 * px if mode in ALPHA_MODES else 0
        return buffer + widen + premultiply + _small(target, px)
    # Full size: the conversion to RGB; without a target, EXIF transposition copies it first.
    transposed = buffer if target is None else 0
    if mode in WIDE_MODES:
        convert = 13 * px  # to 32-bit, rescaled, to L, to RGB
    elif mode in ALPHA_MODES:
        convert = 9 * px  # to RGBA, a white RGB canvas, the alpha band
    else:
        convert = 4 * px
    return buffer + transposed + convert + (_small(target, px) if target is not None else 0)


def _kept_frame_bytes(plan: DecodePlan) -> int:
    """The RGB frames already made while the next one is decoded."""
    if plan.target is None:
        return sum(4 * f.pixels for f in plan.frames)
    return sum(4 * min(plan.target * plan.target, f.pixels) for f in plan.frames)


def _small(target: int, pixels: int) -> int:
    # Resampling goes through a reduced copy of at most about twice the target per side (and
    # its premultiplied twin), then the target-sized result and its conversions; none of them
    # larger than the source.
    side = 2 * target + 2
    return 8 * min(side * side, pixels) + 16 * min(target * target, pixels)
