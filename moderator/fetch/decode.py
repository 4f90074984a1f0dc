"""Decode object bytes into a few RGB frames, refusing bombs, odd formats and broken files.

Every decode is planned from the header first (frame count, sizes, modes): the plan's peak
memory is reserved from the process's DecodeBudget before a pixel is decoded, and the decode
runs against a deadline checked between frames and between the full-size steps of each frame.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageFile

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch import jpeg_native, pixels
from moderator.fetch.budget import DecodeBudget
from moderator.fetch.decode_cost import DecodePlan, FrameShape, peak_bytes
from moderator.fetch.headers import accepts, apng_frames, recognised_format
from moderator.fetch.limits import Deadline, DecodeLimits
from moderator.fetch.prescan import GifLayout, count_jpeg_scans, count_png_chunks, scan_gif

__all__ = ["DecodeLimits", "DecodedImage", "decode_image", "sample_indices", "sha256_hex"]

MAX_SOURCE_FRAMES = 10_000
"""More frames than this is not a real animation but a way to burn CPU: treated as a bomb."""
MAX_PNG_CHUNKS = 100_000
"""Pillow parses PNG chunks in Python (about 3 us each): a file of tiny chunks burns CPU."""
SCANS_PER_PASS = 8
"""A progressive JPEG's scans cost about an eighth of a full decode each (measured)."""

COMPOSITED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
"""Animations whose frame k is drawn over frame k-1: reaching it decodes every frame before."""

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


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


def decode_image(
    data: bytes,
    limits: DecodeLimits,
    target_size: int | None,
    budget: DecodeBudget | None = None,
    *,
    sha256: str | None = None,
    native_max_pixels: int = jpeg_native.MAX_PIXELS,
) -> DecodedImage:
    """Decode `data` into up to `limits.max_frames` RGB frames, longest side <= `target_size`.

    `sha256`: the bytes' hex SHA-256 when the caller has it already (else it is computed).
    A plain still JPEG of at most `native_max_pixels` is decoded by libjpeg-turbo directly
    (jpeg_native; 0: never); every other file, and any the native decoder refuses, by Pillow.
    With a `budget`, the decode's planned peak memory is reserved from it first (waiting for
    other decodes to finish if need be). `limits.timeout_s` bounds the CPU time it may use.
    Raises ProcessingError: UNSUPPORTED_FORMAT, CORRUPT_IMAGE, DECOMPRESSION_BOMB or
    DECODE_TIMEOUT.
    """
    digest = sha256 if sha256 is not None else sha256_hex(data)
    clock = Deadline(limits.timeout_s)
    header = jpeg_native.read_header(data) if "JPEG" in limits.allowed_formats else None
    if header is not None and header.width * header.height <= native_max_pixels:
        native = _decode_native(data, header, limits, target_size, budget, clock, digest)
        if native is not None:
            return native
    try:
        with _open_allowed(data, limits.allowed_formats) as im:
            clock.check("parsing the header")
            plan, source = _plan(im, data, limits, target_size)
            with _reserved(budget, peak_bytes(plan)):
                return _decode(im, source, plan, clock, digest)
    except ProcessingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, _bomb(exc, limits)) from exc
    # Pillow's decoders raise a wide and version-dependent set of exceptions for bad input;
    # every one of them means the bytes are not a usable image.
    except Exception as exc:
        raise ProcessingError(ErrorCode.CORRUPT_IMAGE, _first_line(exc)) from exc


def _decode_native(
    data: bytes,
    header: jpeg_native.JpegHeader,
    limits: DecodeLimits,
    target: int | None,
    budget: DecodeBudget | None,
    clock: Deadline,
    digest: str,
) -> DecodedImage | None:
    """The plain JPEG through libjpeg-turbo, under the same limits; None: let Pillow decode it."""
    width, height = header.width, header.height
    _check_pixels((width, height), limits.max_pixels)
    _check_work(limits, *_jpeg_work(data, width, height, header.progressive, header.components))
    shape = jpeg_native.scaled_shape(data, header, target)
    if shape is None:
        return None
    plan = DecodePlan(
        format="JPEG",
        frames=(FrameShape(*shape),),
        target=target,
        object_bytes=len(data),
        composited=False,
        progressive_pixels=width * height if header.progressive else 0,
        components=header.components,
        rle=False,
    )
    clock.check("parsing the header")
    with _reserved(budget, peak_bytes(plan)):
        frame = jpeg_native.decode_frame(data, header, target, clock.check)
    if frame is None:
        return None
    if header.orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return DecodedImage((frame,), "JPEG", width, height, 1, digest)


@dataclass(frozen=True)
class _Source:
    format: str
    width: int  # frame 0's size before any draft scaling
    height: int
    frame_count: int
    indices: tuple[int, ...]  # the frames to keep


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
        if factory is None or accept is None or not accepts(accept, prefix):
            continue
        if name.upper() == "PNG":
            _check_png_header(data)  # before Pillow parses it
        try:
            return factory(io.BytesIO(data), "")
        except SyntaxError as exc:
            bad_header = exc
    if bad_header is not None:
        raise ProcessingError(ErrorCode.CORRUPT_IMAGE, _first_line(bad_header)) from bad_header
    other = recognised_format(data)
    if not data:
        what = "the object is empty (0 bytes)"
    else:
        what = f"format {other} is not allowed" if other else "not a recognised image format"
    raise ProcessingError(ErrorCode.UNSUPPORTED_FORMAT, what)


def _check_png_header(data: bytes) -> None:
    chunks = count_png_chunks(data, MAX_PNG_CHUNKS)
    if chunks > MAX_PNG_CHUNKS:
        msg = f"more than {MAX_PNG_CHUNKS} PNG chunks to parse"
        raise ProcessingError(ErrorCode.DECODE_TIMEOUT, msg)
    declared = apng_frames(data)
    if declared is not None:
        _check_frames(declared, "declares")


def _check_frames(count: int, says: str) -> None:
    """`says`: "has" for frames counted, "declares" for a count that only the header gives."""
    if count < 1:
        msg = f"the file {says} {count} frames (an image needs at least 1)"
        raise ProcessingError(ErrorCode.CORRUPT_IMAGE, msg)
    if count > MAX_SOURCE_FRAMES:
        msg = f"the file {says} {count} frames (limit {MAX_SOURCE_FRAMES})"
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, msg)


def _plan(
    im: ImageFile.ImageFile, data: bytes, limits: DecodeLimits, target: int | None
) -> tuple[DecodePlan, _Source]:
    """What will be decoded, from the header alone; refuses what is over the pixel limits."""
    fmt = im.format or "UNKNOWN"
    width, height = im.size
    _check_pixels(im.size, limits.max_pixels)
    # Pillow counts a GIF's frames by walking them all in Python: count (boundedly) first.
    layout = scan_gif(data, MAX_SOURCE_FRAMES) if fmt == "GIF" else None
    if fmt == "MPO":
        # A multi-picture JPEG (stereo or depth views): the primary picture is the photo.
        fmt, n_frames = "JPEG", 1
    elif layout is not None and layout.frames > MAX_SOURCE_FRAMES:
        # The walk stops one frame past the limit: the file may hold any number more.
        msg = f"the file has more than {MAX_SOURCE_FRAMES} frames (limit {MAX_SOURCE_FRAMES})"
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, msg)
    else:
        n_frames = int(getattr(im, "n_frames", 1))
    _check_frames(n_frames, "has")
    indices = tuple(sample_indices(n_frames, limits.max_frames))
    source = _Source(fmt, width, height, n_frames, indices)
    progressive = 0
    if fmt == "JPEG":
        if im.info.get("progressive"):
            progressive = width * height
        if target is not None:
            # libjpeg then decodes at 1/2, 1/4 or 1/8 scale: most of the cost of a large photo.
            im.draft("RGB", pixels.fit(im.size, target))
    composited = n_frames > 1 and fmt in COMPOSITED_FORMATS
    if composited:
        canvas = _canvas(im, layout)
        _check_pixels(canvas, limits.max_pixels)
        # Frames after the first are composited in RGB(A), whatever the first frame's mode.
        mode = "RGBA" if fmt == "GIF" else im.mode
        shapes = tuple(FrameShape(*canvas, mode) for _ in indices)
        visited = indices[-1] + 1  # reaching a frame decodes every one before it
        work = canvas[0] * canvas[1] * visited
        what = f"{visited} frames of {canvas[0]}x{canvas[1]}"
    elif n_frames > 1:
        shapes = tuple(_page_shape(im, i, limits.max_pixels) for i in indices)
        im.seek(0)
        work = sum(f.pixels for f in shapes)
        what = f"{len(shapes)} pages"
    elif fmt == "JPEG":
        shapes = (_shape(im),)
        work, what = _jpeg_work(data, width, height, bool(progressive), _components(im))
    else:
        shapes = (_shape(im),)
        work = width * height
        what = f"{width}x{height}"
    _check_work(limits, work, what)
    plan = DecodePlan(
        format=fmt,
        frames=shapes,
        target=target,
        object_bytes=len(data),
        composited=composited,
        progressive_pixels=progressive,
        components=_components(im),
        rle=any(tile[0] == "bmp_rle" for tile in im.tile),
    )
    return plan, source


def _jpeg_work(
    data: bytes, width: int, height: int, progressive: bool, components: int
) -> tuple[int, str]:
    """A JPEG's decode work in pixels, and what it is, for `_check_work`.

    Every scan is a pass over the full-size image, whatever the draft scale. A sequential JPEG
    names each component in exactly one scan, so its components bound its scans without
    reading the whole file; only a progressive one is counted.
    """
    scans = count_jpeg_scans(data) if progressive else max(1, components)
    return width * height * -(-scans // SCANS_PER_PASS), f"{width}x{height} in {scans} scans"


def _check_work(limits: DecodeLimits, work: int, what: str) -> None:
    if limits.max_decoded_pixels is not None and work > limits.max_decoded_pixels:
        raise ProcessingError(
            ErrorCode.DECODE_TIMEOUT,
            f"decoding {what} = {work} pixels is more work than allowed "
            f"(fetch.max_decoded_pixels = {limits.max_decoded_pixels})",
        )


def _components(im: ImageFile.ImageFile) -> int:
    """The frame header's component count (Pillow's `layers`; 4 when it does not say)."""
    return int(getattr(im, "layers", 4) or 4)


def _canvas(im: ImageFile.ImageFile, layout: GifLayout | None) -> tuple[int, int]:
    """An animation's canvas: a GIF's grows to fit frames that stick out of its screen."""
    if layout is None:
        return im.size
    return max(layout.width, im.size[0]), max(layout.height, im.size[1])


def _shape(im: ImageFile.ImageFile) -> FrameShape:
    mode = im.mode
    if "transparency" in im.info and mode in ("1", "L", "P", "RGB"):
        mode = "PA"  # a transparent colour becomes alpha before resampling: count it as such
    return FrameShape(im.size[0], im.size[1], mode)


def _page_shape(im: ImageFile.ImageFile, index: int, max_pixels: int) -> FrameShape:
    """A page of a multi-page file whose pages are independent (TIFF): its own size and mode."""
    im.seek(index)
    _check_pixels(im.size, max_pixels)
    return _shape(im)


@contextmanager
def _reserved(budget: DecodeBudget | None, nbytes: int) -> Iterator[None]:
    if budget is None:
        yield
        return
    with budget.reserve(nbytes):
        yield


def _decode(
    im: ImageFile.ImageFile, source: _Source, plan: DecodePlan, clock: Deadline, digest: str
) -> DecodedImage:
    orientation = im.getexif().get(_ORIENTATION_TAG, 1)  # PNG: decodes frame 0 to find it
    orientation = orientation if isinstance(orientation, int) else 1
    size = (source.width, source.height)
    width, height = size[::-1] if orientation in _SWAPPING_ORIENTATIONS else size
    # Composited animations are walked frame by frame, each decoded once, so that the deadline
    # is checked between any two of them; other formats seek straight to the frames kept.
    steps = range(source.indices[-1] + 1) if plan.composited else source.indices
    largest = max(f.pixels for f in plan.frames)
    frames = []
    for index in steps:
        if index:
            clock.check(f"before frame {index}")
            im.seek(index)
            if im.size[0] * im.size[1] > largest:
                msg = f"frame {index} is {im.size[0]}x{im.size[1]}, larger than its header said"
                raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, msg)
        if index in source.indices:
            frames.append(_frame(im, orientation, plan.target, clock))
        else:
            im.load()
    return DecodedImage(tuple(frames), source.format, width, height, source.frame_count, digest)


def sample_indices(n_frames: int, k: int) -> list[int]:
    """Up to `k` frame indices spread evenly over `n_frames`, first and last included."""
    if n_frames <= k:
        return list(range(n_frames))
    if k == 1:
        return [0]
    return sorted({round(i * (n_frames - 1) / (k - 1)) for i in range(k)})


def _frame(
    im: ImageFile.ImageFile, orientation: int, target: int | None, clock: Deadline
) -> Image.Image:
    im.load()
    clock.check("after decoding a frame")
    return pixels.engine_frame(im, orientation, target, clock.check)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    # Pillow's own limit still applies deeper down (as a warning, then an error): never let
    # an image past ours that would only trip it later.
    max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    count = size[0] * size[1]
    if count > max_pixels:
        msg = f"{size[0]}x{size[1]} = {count} pixels (limit {max_pixels})"
        raise ProcessingError(ErrorCode.DECOMPRESSION_BOMB, msg)


def _bomb(exc: BaseException, limits: DecodeLimits) -> str:
    """Pillow's refusal of a frame that no header announced (a GIF frame larger than its
    screen, or placed far outside it), in the terms of `_check_pixels`."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is None:
        return _first_line(exc)
    limit = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    return f"a frame of {int(found[1])} pixels, larger than its header said (limit {limit})"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().split("\n")[0] or type(exc).__name__)[:200]
