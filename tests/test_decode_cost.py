"""The decode memory estimate: its arithmetic, and checked against measured peak RSS.

Pillow's pixel buffers live outside the Python heap (tracemalloc does not see them), so the
measurement is the kernel's: bench/decode_bench.py decodes one image per fresh process and
reads its peak resident set size (VmHWM, reset just before the decode).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moderator.fetch.decode_cost import DecodePlan, FrameShape, peak_bytes, stored_bytes_per_pixel

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "decode_bench.py"

# The costliest case of each format and decoder path (bench/decode_bench.py --memory lists all).
MEASURED_CASES = [
    "png-RGBA",
    "png-P-transparent",
    "png-I16",
    "apng-RGBA",
    "gif-anim-RGB",
    "webp-lossy",
    "webp-anim",
    "tiff-RGBA-one-strip",
    "jpeg-progressive",
    "bmp-rle8",
]


def plan(*frames: FrameShape, fmt: str = "PNG", target: int | None = 448, **kw: Any) -> int:
    return peak_bytes(DecodePlan(format=fmt, frames=frames, target=target, object_bytes=0, **kw))


def test_stored_bytes_per_pixel_follow_pillow() -> None:
    assert [stored_bytes_per_pixel(m) for m in ("1", "L", "P", "I;16", "LA", "RGB", "RGBA")] == [
        1,
        1,
        1,
        2,
        4,
        4,
        4,
    ]


def test_estimate_covers_the_decode_buffer_and_grows_with_it() -> None:
    small = plan(FrameShape(1000, 1000, "RGBA"))
    large = plan(FrameShape(4000, 4000, "RGBA"))
    assert small >= 1000 * 1000 * 4
    assert large >= 4000 * 4000 * 4 * 2  # the buffer and Pillow's premultiplied copy
    assert large > 6 * small


def test_grey_costs_less_than_colour_and_colour_less_than_16_bit() -> None:
    shape = (3000, 3000)
    grey, colour, wide = (plan(FrameShape(*shape, m)) for m in ("L", "RGB", "I;16"))
    assert grey < colour < wide


def test_full_size_frames_cost_more_than_downscaled_ones() -> None:
    frame = FrameShape(3000, 3000, "RGB")
    assert plan(frame, target=None) > plan(frame, target=448) + 3000 * 3000 * 4


def test_progressive_jpeg_counts_the_full_size_coefficients() -> None:
    drafted = FrameShape(500, 500, "RGB")  # 4000x4000 at 1/8 scale
    baseline = plan(drafted, fmt="JPEG")
    progressive = plan(drafted, fmt="JPEG", progressive_pixels=4000 * 4000, components=3)
    assert progressive - baseline >= 4000 * 4000 * 3 * 2


def test_animation_canvas_and_kept_frames_are_counted() -> None:
    canvas = FrameShape(2000, 2000, "RGBA")
    still = plan(canvas, fmt="GIF")
    animated = plan(canvas, canvas, canvas, canvas, fmt="GIF", composited=True)
    assert animated - still >= 8 * 2000 * 2000


def test_webp_counts_its_decoder_and_input_copies() -> None:
    frame = FrameShape(2000, 2000, "RGB")
    png = plan(frame)
    webp = peak_bytes(DecodePlan(format="WEBP", frames=(frame,), target=448, object_bytes=10 * MiB))
    assert webp - png >= 12 * 2000 * 2000 + 2 * 10 * MiB


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak RSS reset"
)
def test_estimate_is_never_below_the_measured_peak() -> None:
    """About 6-12 s on 2 cores: ten fresh processes, each decoding one 1536x1536 image."""
    args = [sys.executable, str(BENCH), "--memory", "--json", "--side", "1536"]
    for case in MEASURED_CASES:
        args += ["--case", case]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=240, cwd=REPO)
    rows = json.loads(out.stdout)
    assert [r["case"] for r in rows] == MEASURED_CASES
    for r in rows:
        measured, estimate = r["measured"], r["estimate"]
        assert measured <= estimate, f"{r['case']}: measured {measured} > estimate {estimate}"
        # Conservative, but not so much that the budget would be wasted.
        assert estimate <= 3 * measured + 24 * MiB, f"{r['case']}: {estimate} vs {measured}"
