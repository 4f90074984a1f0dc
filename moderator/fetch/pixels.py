"""Turning a decoded frame into an RGB frame of the engine's size, with as few full-size copies
as possible: downscale first where the mode allows it, then orient and convert the small image."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from moderator.fetch.decode_cost import ALPHA_MODES, SHRINK_FIRST, WIDE_MODES

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def fit(size: tuple[int, int], target: int) -> tuple[int, int]:
    """The size of `size` brought within `target` on its longer side: never larger than it was."""
    w, h = size
    scale = min(1.0, target / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def engine_frame(
    im: Image.Image, orientation: int, target: int | None, checkpoint: Callable[[str], None]
) -> Image.Image:
    """A new RGB image of loaded frame `im`: upright, longest side <= `target` (None: as is).

    `checkpoint` is called between the full-size steps (it raises to stop the work).
    """
    if target is not None and im.mode in SHRINK_FIRST:
        high = _high(im)  # of the full image: resampling would smooth a lone bright pixel away
        small = shrink(im, target)
        checkpoint("after downscaling a frame")
        return to_rgb(transpose(small, orientation), high)
    if target is None:
        return to_rgb(transpose(im, orientation))
    rgb = to_rgb(im)
    checkpoint("after converting a frame")
    rgb.thumbnail((target, target))
    return transpose(rgb, orientation)  # turning commutes with scaling: turn the small one


def shrink(im: Image.Image, target: int) -> Image.Image:
    """`im` (a mode in SHRINK_FIRST) brought within `target`, in a mode that resamples smoothly.

    Palette and bilevel images are widened first (Pillow resamples them by nearest neighbour),
    a transparent colour becomes alpha and 16-bit grey becomes 32-bit, so that resampling
    averages values, not indices. Pillow resamples alpha premultiplied, so compositing
    afterwards gives the same result as compositing first. May return `im` itself.
    """
    work = im
    if im.mode.startswith("I;16"):
        work = im.convert("I")
    elif im.mode == "PA" or ("transparency" in im.info and im.mode not in ALPHA_MODES):
        work = im.convert("RGBA")
    elif im.mode == "P":
        work = im.convert("RGB")
    elif im.mode == "1":
        work = im.convert("L")
    size = fit(work.size, target)
    if size == work.size:
        return work
    return work.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def transpose(im: Image.Image, orientation: int) -> Image.Image:
    """`im` turned upright for an EXIF orientation (1, or an unknown value: as it is)."""
    method = _TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def to_rgb(im: Image.Image, high: float | None = None) -> Image.Image:
    """A new RGB image; alpha is composited on white, 16-bit and float values are rescaled.

    `high`: the source's largest value when `im` is a downscaled copy of it.
    """
    if im.mode in WIDE_MODES:
        wide = im.convert("I") if im.mode.startswith("I;16") else im
        high = _high(wide) if high is None else high
        if high is not None and high > 255:
            wide = wide.point(lambda v: v * (255 / 65535))
        return wide.convert("L").convert("RGB")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _high(im: Image.Image) -> float | None:
    if im.mode not in WIDE_MODES:
        return None
    high = im.getextrema()[1]
    return high if isinstance(high, int | float) else None
