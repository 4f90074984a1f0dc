"""Decode object bytes into a few RGB frames, refusing bombs, odd formats and broken files."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, ImageOps

from moderator.errors import ErrorCode, ProcessingError

if TYPE_CHECKING:
    from moderator.settings import FetchSettings

MAX_SOURCE_FRAMES = 10_000
"""More frames than this is not a real animation but a way to burn CPU: treated as a bomb."""

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


@dataclass(frozen=True)
class DecodeLimits:
    """What decode_image accepts: format allowlist, pixel limit, frames sampled (K)."""

    allowed_formats: tuple[str, ...]
    max_pixels: int
    max_frames: int

    @classmethod
    def from_settings(cls, s: FetchSettings) -> DecodeLimits:
        """The limits configured in the `fetch` settings section."""
        return cls(tuple(f.upper() for f in s.allowed_formats), s.max_pixels, s.max_frames)


@dataclass(frozen=True)
class DecodedImage:
    """RGB frames ready for an engine, plus facts about the source for the verdict.

    `width` and `height` are the source's, after EXIF orientation; `frame_count` counts the
    source's frames (1 for a still), of which `frames` holds an even sample.
    """

    frames: tuple[Image.Image, ...]
    format: str
    width: int
    height: int
    frame_count: int
    sha256: str


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of the object bytes (the verdict cache key's first part)."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: DecodeLimits, target_size: int | None) -> DecodedImage:
    """Decode `data` into up to `limits.max_frames` RGB frames, longest side <= `target_size`.

    Raises ProcessingError: UNSUPPORTED_FORMAT, CORRUPT_IMAGE or DECOMPRESSION_BOMB.
    """
    digest = sha256_hex(data)
    try:
        with _open_allowed(data, limits.allowed_formats) as im:
            return _decode(im, limits, target_size, digest)
    except ProcessingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, _first_line(exc)) from exc
    # Pillow's decoders raise a wide and version-dependent set of exceptions for bad input;
    # every one of them means the bytes are not a usable image.
    except Exception as exc:
        raise ProcessingError(ErrorCode.CORRUPT_IMAGE, _first_line(exc)) from exc


def _open_allowed(data: bytes, allowed: tuple[str, ...]) -> ImageFile.ImageFile:
    """Parse the header with the allowed plugin whose sniffer claims the bytes.

    Not Image.open: it would try plugins outside the allowlist, and its global pixel check
    warns (or raises) before our configurable limit gets a say.
    """
    Image.init()
    prefix = data[:16]
    bad_header: SyntaxError | None = None
    for name in allowed:
        factory, accept = Image.OPEN.get(name.upper(), (None, None))
        # Plugins without a sniffer are never tried: Pillow would feed them anything.
        if factory is None or accept is None or not _accepts(accept, prefix):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except SyntaxError as exc:
            bad_header = exc
    if bad_header is not None:
        raise ProcessingError(ErrorCode.CORRUPT_IMAGE, _first_line(bad_header)) from bad_header
    others = [n for n, (_, acc) in Image.OPEN.items() if acc and _accepts(acc, prefix)]
    what = f"format {others[0]} is not allowed" if others else "not a recognised image format"
    raise ProcessingError(ErrorCode.UNSUPPORTED_FORMAT, what)


def _accepts(accept: Callable[[bytes], bool | str], prefix: bytes) -> bool:
    try:
        return accept(prefix) is True
    except (IndexError, TypeError, struct.error):  # short prefixes trip some sniffers
        return False


def _decode(
    im: ImageFile.ImageFile, limits: DecodeLimits, target: int | None, digest: str
) -> DecodedImage:
    fmt = im.format or "UNKNOWN"
    _check_pixels(im.size, limits.max_pixels)
    if fmt == "MPO":
        # A multi-picture JPEG (stereo or depth views): the primary picture is the photo.
        fmt, n_frames = "JPEG", 1
    else:
        n_frames = int(getattr(im, "n_frames", 1))
    if not 1 <= n_frames <= MAX_SOURCE_FRAMES:
        code = ErrorCode.CORRUPT_IMAGE if n_frames < 1 else ErrorCode.DECOMPRESSION_BOMB
        raise ProcessingError(code, f"{n_frames} frames (limit {MAX_SOURCE_FRAMES})")
    orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    orientation = orientation if isinstance(orientation, int) else 1
    width, height = im.size[::-1] if orientation in _SWAPPING_ORIENTATIONS else im.size
    frames = []
    for index in sample_indices(n_frames, limits.max_frames):
        if index:
            im.seek(index)
            _check_pixels(im.size, limits.max_pixels)
        frames.append(_frame(im, fmt, orientation, target))
    return DecodedImage(tuple(frames), fmt, width, height, n_frames, digest)


def sample_indices(n_frames: int, k: int) -> list[int]:
    """Up to `k` frame indices spread evenly over `n_frames`, first and last included."""
    if n_frames <= k:
        return list(range(n_frames))
    if k == 1:
        return [0]
    return sorted({round(i * (n_frames - 1) / (k - 1)) for i in range(k)})


def _frame(im: ImageFile.ImageFile, fmt: str, orientation: int, target: int | None) -> Image.Image:
    if target is not None and fmt == "JPEG":
        # libjpeg then decodes at 1/2, 1/4 or 1/8 scale: most of the cost of a large photo.
        im.draft("RGB", _fit(im.size, target))
    im.load()
    source: Image.Image = ImageOps.exif_transpose(im) if orientation != 1 else im
    rgb = _to_rgb(source)
    if target is not None:
        rgb.thumbnail((target, target))
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image; alpha is composited on white, 16-bit and float values are rescaled."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        wide = im.convert("I") if im.mode.startswith("I;16") else im
        high = wide.getextrema()[1]
        if isinstance(high, int | float) and high > 255:
            wide = wide.point(lambda v: v * (255 / 65535))
        return wide.convert("L").convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _fit(size: tuple[int, int], target: int) -> tuple[int, int]:
    """The size `thumbnail((target, target))` produces: never larger than the source."""
    w, h = size
    scale = min(1.0, target / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    # Pillow's own limit still applies deeper down (as a warning, then an error): never let
    # an image past ours that would only trip it later.
    max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        msg = f"{size[0]}x{size[1]} = {pixels} pixels (limit {max_pixels})"
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, msg)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().split("\n")[0] or type(exc).__name__)[:200]
