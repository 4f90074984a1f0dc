"""Generated inputs for the decode limits: structure walks agree with Pillow, mangled files never
escape as anything but ProcessingError, and no reservation outlives its decode."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.budget import DecodeBudget
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.prescan import count_jpeg_scans, count_png_chunks, scan_gif
from tests.fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

ALL = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
LIMITS = DecodeLimits(ALL, 1_000_000, 3, timeout_s=5.0, max_decoded_pixels=4_000_000)
EXPECTED = {
    ErrorCode.CORRUPT_IMAGE,
    ErrorCode.UNSUPPORTED_FORMAT,
    ErrorCode.DECOMPRESSION_BOMB,
    ErrorCode.DECODE_TIMEOUT,
}

frame_st = st.tuples(
    st.integers(1, 40),  # width
    st.integers(1, 40),  # height
    st.integers(0, 30),  # x offset
    st.integers(0, 30),  # y offset
    st.integers(0, 255),  # colour
)


def _gif(screen: tuple[int, int], frames: list[tuple[int, int, int, int, int]]) -> bytes:
    """A GIF whose frames have their own sizes and offsets (Pillow writes each frame's box)."""
    images = []
    for w, h, x, y, colour in frames:
        canvas = Image.new("P", screen, 0)
        canvas.putpalette([(i * 7) % 256 for i in range(768)])
        canvas.paste(colour, (x, y, x + w, y + h))
        images.append(canvas)
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], disposal=1)
    return buf.getvalue()


@fuzz_settings(150)
@given(
    screen=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    frames=st.lists(frame_st, min_size=1, max_size=6),
)
def test_gif_layout_agrees_with_pillow(
    screen: tuple[int, int], frames: list[tuple[int, int, int, int, int]]
) -> None:
    """Default 150 examples, well under a second: scan_gif's frame count is Pillow's, and its
    canvas is never smaller than the one Pillow composites the frames on."""
    data = _gif(screen, frames)
    layout = scan_gif(data, 10_000)
    assert layout is not None
    with Image.open(io.BytesIO(data)) as im:
        n_frames = int(getattr(im, "n_frames", 1))
        assert layout.frames == n_frames
        for index in range(n_frames):
            im.seek(index)
            assert im.size[0] <= layout.width and im.size[1] <= layout.height


@fuzz_settings(500)
@given(data=st.binary(max_size=600), limit=st.integers(0, 50))
def test_structure_walks_take_any_bytes(data: bytes, limit: int) -> None:
    """Default 500 examples, well under a second: the walks never raise and respect the limit."""
    for prefix in (b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"):
        blob = prefix + data
        layout = scan_gif(blob, limit)
        assert layout is None or 0 <= layout.frames <= limit + 1
        assert 0 <= count_png_chunks(blob, limit) <= limit + 1
        assert count_jpeg_scans(blob) >= 1


def _animation(fmt: str, n: int, size: int) -> bytes:
    frames = [Image.new("RGBA", (size, size), (40 * i % 256, 90, 200, 255)) for i in range(n)]
    buf = io.BytesIO()
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=40, **params)
    return buf.getvalue()


@fuzz_settings(300)
@given(
    fmt=st.sampled_from(["GIF", "PNG", "WEBP", "TIFF", "JPEG", "BMP"]),
    frames=st.integers(1, 5),
    size=st.integers(1, 48),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10**6),
)
def test_mangled_images_leave_no_reservation_behind(
    fmt: str, frames: int, size: int, edits: list[tuple[int, int]], cut: int
) -> None:
    """Default 300 examples, about a second: whatever the bytes, decode_image returns RGB frames or
    raises ProcessingError with a decode code, and the budget is back to zero afterwards."""
    if fmt in ("JPEG", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (size, size), (10, 200, 30)).save(buf, fmt)
        raw = buf.getvalue()
    else:
        raw = _animation(fmt, frames, size)
    data = bytearray(raw)
    for pos, value in edits:
        data[pos % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    budget = DecodeBudget(64 << 20, max_wait_s=5)
    try:
        out = decode_image(bytes(data), LIMITS, 16, budget)
    except ProcessingError as exc:
        assert exc.code in EXPECTED
        assert "\n" not in exc.message
    else:
        assert all(f.mode == "RGB" and max(f.size) <= 16 for f in out.frames)
    assert budget.used == 0
