"""Decoding costs: time saved by JPEG draft decoding and by the native JPEG decoder, and peak
memory per decode vs its estimate.

    .venv/bin/python bench/decode_bench.py             # draft vs full, native vs Pillow
    .venv/bin/python bench/decode_bench.py --memory    # peak RSS of one decode, per format/mode

The memory mode decodes one image per case in a fresh process and reads the kernel's peak
resident set size (VmHWM, reset just before the decode) against the bytes decode_image reserved
from its DecodeBudget: the estimate must never be below the measurement. tests/test_decode_cost.py
runs it for the costliest cases.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from moderator.fetch import jpeg_native
from moderator.fetch.budget import DecodeBudget
from moderator.fetch.decode import DecodeLimits, decode_image

SIZE = (4000, 3000)
REPEATS = 3  # decodes per image; the fastest counts
LIMITS = DecodeLimits(allowed_formats=("JPEG",), max_pixels=64_000_000, max_frames=1)


def make_photo(seed: int, size: tuple[int, int] = SIZE, quality: int = 90) -> bytes:
    """A JPEG with photo-like statistics: soft shapes, gradients, edges and sensor noise."""
    rng = random.Random(seed)
    w, h = size
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize(size)
    im = Image.composite(Image.new("RGB", size, top), Image.new("RGB", size, bottom), gradient)
    draw = ImageDraw.Draw(im)
    for _ in range(300):
        x, y = rng.randrange(w), rng.randrange(h)
        rx, ry = rng.randrange(20, w // 6), rng.randrange(20, h // 6)
        fill = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x - rx, y - ry, x + rx, y + ry), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(2))
    noise = Image.merge("RGB", [Image.effect_noise(size, 10) for _ in range(3)])
    im = ImageChops.add(im, noise, scale=1.0, offset=-128)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


ALWAYS_NATIVE = 1 << 62
"""native_max_pixels that sends every plain JPEG to the native decoder, whatever its size."""


def _ms_per_image(
    images: list[bytes],
    target: int | None,
    resize_after: int | None = None,
    *,
    native_max_pixels: int = jpeg_native.MAX_PIXELS,
) -> float:
    """Mean over the images of the best of `REPEATS` decodes, in ms of this thread's CPU time
    (both decoders decode in the calling thread): other work on the machine does not inflate it."""
    times = []
    for data in images:
        best = math.inf
        for _ in range(REPEATS):
            t0 = time.thread_time()
            decoded = decode_image(data, LIMITS, target, native_max_pixels=native_max_pixels)
            if resize_after is not None:
                decoded.frames[0].thumbnail((resize_after, resize_after))
            best = min(best, (time.thread_time() - t0) * 1000)
        times.append(best)
    return statistics.mean(times)


def run_decode_bench(n_images: int = 5, target: int = 448) -> dict[str, float]:
    """Decode n 12 MP JPEGs in full and at `target`; ms/image for both and the speed-up.

    `full_resize_ms` adds the naive alternative to drafting: decode in full, then resize.
    `native_draft_ms` is the draft decode by the native decoder, which the service leaves to
    Pillow at this size (jpeg_native.MAX_PIXELS).
    """
    images = [make_photo(seed) for seed in range(n_images)]
    _ms_per_image(images[:1], None)  # warm-up: plugin imports, allocator
    full = _ms_per_image(images, None)
    draft = _ms_per_image(images, target)
    full_resize = _ms_per_image(images, None, resize_after=target)
    native_draft = _ms_per_image(images, target, native_max_pixels=ALWAYS_NATIVE)
    return {
        "n_images": float(n_images),
        "target": float(target),
        "mean_jpeg_mb": statistics.mean(len(d) for d in images) / 1e6,
        "full_ms": full,
        "draft_ms": draft,
        "speedup": full / draft,
        "full_resize_ms": full_resize,
        "native_draft_ms": native_draft,
    }


def small_jpegs(n: int, side: int) -> list[bytes]:
    """Distinct `side`-pixel JPEGs of flat colours (the pipeline benches' kind of image)."""
    rng = random.Random(0)
    images = []
    for _ in range(n):
        im = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(im).ellipse((4, 4, side - 4, side - 8), fill=(rng.randrange(256), 0, 0))
        images.append(_encode(im, "JPEG", quality=90))
    return images


SIZES = ((64, 64), (640, 480), (1280, 960), (2000, 1500))


def run_sizes_bench(target: int = 448) -> list[dict[str, float]]:
    """ms of CPU per JPEG to the model's input, by the native decoder and on Pillow's way, per
    size (64x64 flat images, photos above), alternately in rounds; the best round of each."""
    rows = []
    for size in SIZES:
        if size[0] < 320:
            images = small_jpegs(200, size[0])
        else:
            images = [make_photo(seed, size) for seed in range(3)]
        best = {ALWAYS_NATIVE: math.inf, 0: math.inf}
        for _ in range(REPEATS + 2):
            for limit in best:
                t0 = time.thread_time()
                for data in images:
                    decode_image(data, LIMITS, target, native_max_pixels=limit)
                best[limit] = min(best[limit], (time.thread_time() - t0) / len(images) * 1000)
        rows.append(
            {
                "width": size[0],
                "height": size[1],
                "native_ms": best[ALWAYS_NATIVE],
                "pillow_ms": best[0],
                "default_native": float(size[0] * size[1] <= jpeg_native.MAX_PIXELS),
            }
        )
    return rows


# -- peak memory per decode ---------------------------------------------------------------------

MiB = 1 << 20
ALL_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MEMORY_TARGET = 448


def _encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(size: tuple[int, int], mode: str) -> Image.Image:
    """Noise in `mode`, so that no decoder can take a shortcut on flat data."""
    grey = Image.effect_noise(size, 64)
    if mode in ("L", "1", "P"):
        return grey.convert(mode)
    bands = [grey.rotate(90 * i) for i in range(len(Image.new(mode, (1, 1)).getbands()))]
    return Image.merge(mode, bands[: len(Image.new(mode, (1, 1)).getbands())])


def _frames(size: tuple[int, int], n: int, mode: str) -> list[Image.Image]:
    return [Image.new(mode, size, (40 * i) % 256 if mode in ("L", "P") else None) for i in range(n)]


def memory_cases(side: int) -> dict[str, Callable[[], bytes]]:
    """Images that make decode_image allocate the most, per format and mode, `side` px square."""
    size = (side, side)
    exif = Image.Exif()
    exif[0x0112] = 6

    def animation(fmt: str, mode: str, **params: Any) -> bytes:
        noise = _noise(size, mode)
        turns = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)
        frames = [noise, *(noise.transpose(t) for t in turns)]
        return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)

    return {
        "png-L-flat": lambda: _encode(Image.new("L", size), "PNG"),
        "png-1": lambda: _encode(_noise(size, "1"), "PNG"),
        "png-RGB-interlaced": lambda: _encode(_noise(size, "RGB"), "PNG", interlace=1),
        "png-RGBA": lambda: _encode(_noise(size, "RGBA"), "PNG", compress_level=0),
        "png-LA": lambda: _encode(_noise(size, "LA"), "PNG"),
        "png-P-transparent": lambda: _encode(_noise(size, "P"), "PNG", transparency=0),
        "png-I16": lambda: _encode(
            _noise(size, "L").point(lambda v: v * 250).convert("I;16"), "PNG"
        ),
        "apng-RGBA": lambda: animation("PNG", "RGBA", duration=40, disposal=2, compress_level=0),
        "gif-P": lambda: _encode(_noise(size, "P"), "GIF"),
        "gif-anim": lambda: animation("GIF", "P", duration=40, disposal=2, transparency=0),
        "gif-anim-previous": lambda: animation("GIF", "P", duration=40, disposal=3),
        "gif-anim-RGB": lambda: _gif_local_palettes(size),
        "webp-lossy": lambda: _encode(_noise(size, "RGB"), "WEBP", quality=90),
        "webp-RGBA": lambda: _encode(_noise(size, "RGBA"), "WEBP", lossless=True),
        "webp-anim": lambda: animation("WEBP", "RGBA", duration=40, lossless=True, method=0),
        "tiff-RGB": lambda: _encode(_noise(size, "RGB"), "TIFF"),
        "tiff-RGBA-lzw": lambda: _encode(_noise(size, "RGBA"), "TIFF", compression="tiff_lzw"),
        "tiff-RGBA-one-strip": lambda: _encode(
            _noise(size, "RGBA"), "TIFF", compression="tiff_adobe_deflate", strip_size=1 << 40
        ),
        "tiff-CMYK": lambda: _encode(
            _noise(size, "CMYK"), "TIFF", compression="tiff_adobe_deflate"
        ),
        "tiff-I16": lambda: _encode(_noise(size, "L").convert("I;16"), "TIFF"),
        "tiff-pages": lambda: animation("TIFF", "RGB"),
        "jpeg-444": lambda: _encode(_noise(size, "RGB"), "JPEG", subsampling=0, quality=95),
        "jpeg-progressive": lambda: _encode(
            _noise(size, "RGB"), "JPEG", progressive=True, subsampling=0, quality=95
        ),
        "jpeg-CMYK": lambda: _encode(_noise(size, "CMYK"), "JPEG"),
        "jpeg-rotated": lambda: _encode(_noise(size, "RGB"), "JPEG", exif=exif.tobytes()),
        "bmp-RGB": lambda: _encode(_noise(size, "RGB"), "BMP"),
        "bmp-rle8": lambda: _bmp_rle8(side),
    }


def _gif_local_palettes(size: tuple[int, int]) -> bytes:
    """Three noise frames, each with a palette of its own: Pillow composites them in RGB."""
    frames = []
    for i in range(3):
        frame = _noise(size, "P")
        frame.putpalette([(v * (i + 3)) % 256 for v in range(768)])
        frames.append(frame)
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], optimize=False)


def _bmp_rle8(side: int) -> bytes:
    """An 8-bit RLE BMP (Pillow cannot write one): every row is a run of one colour."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    rows = b"".join(
        bytes((255, y % 256)) * (side // 255) + bytes((side % 255, 1, 0, 0)) for y in range(side)
    )
    pixels = rows + b"\x00\x01"
    header = (
        (40).to_bytes(4, "little")
        + side.to_bytes(4, "little")
        + side.to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (8).to_bytes(2, "little")
        + (1).to_bytes(4, "little")
        + len(pixels).to_bytes(4, "little")
        + bytes(8)
        + (256).to_bytes(4, "little")
        + bytes(4)
    )
    offset = 14 + len(header) + len(palette)
    file_header = b"BM" + (offset + len(pixels)).to_bytes(4, "little") + bytes(4)
    return file_header + offset.to_bytes(4, "little") + header + palette + pixels


def _status(key: str) -> int:
    with Path("/proc/self/status").open(encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _probe(path: str, target: int | None) -> dict[str, Any]:
    """In this (fresh) process: decode `path` once and report its peak RSS over the baseline."""
    limits = DecodeLimits(ALL_FORMATS, 64_000_000, 4)
    data = Path(path).read_bytes()
    warm = _encode(Image.new("RGB", (64, 64)), "PNG")
    decode_image(warm, limits, 16)  # plugins imported, allocator warmed
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    budget = DecodeBudget(1 << 40, 1.0)
    started = time.perf_counter()
    decode_image(data, limits, target, budget)
    return {
        "measured": _status("VmHWM") - base,
        "estimate": budget.peak,
        "seconds": time.perf_counter() - started,
        "object": len(data),
    }


def measure_memory(
    side: int = 2048, names: list[str] | None = None, target: int | None = MEMORY_TARGET
) -> list[dict[str, Any]]:
    """Peak RSS of one decode and decode_image's estimate for it, per case (fresh processes)."""
    cases = memory_cases(side)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(cases):
            path = Path(tmp) / name
            path.write_bytes(cases[name]())
            arg = "none" if target is None else str(target)
            out = subprocess.run(
                [sys.executable, __file__, "--probe", str(path), arg],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"case": name, "side": side, **json.loads(out.stdout)})
    return rows


def main() -> None:
    """Run the bench with its defaults and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", action="store_true", help="peak RSS per decode vs estimate")
    parser.add_argument("--side", type=int, default=4096, help="--memory: image side in pixels")
    parser.add_argument("--full", action="store_true", help="--memory: no target size")
    parser.add_argument("--json", action="store_true", help="--memory: one JSON document")
    parser.add_argument("--case", action="append", help="--memory: only these cases")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        path, target = args.probe
        print(json.dumps(_probe(path, None if target == "none" else int(target))))
        return
    if args.memory:
        target = None if args.full else MEMORY_TARGET
        rows = measure_memory(args.side, args.case, target)
        if args.json:
            print(json.dumps(rows))
            return
        shown = "none" if args.full else MEMORY_TARGET
        print(f"peak RSS of one decode, {args.side}x{args.side}, target {shown}")
        for r in rows:
            ratio = r["estimate"] / max(r["measured"], 1)
            print(
                f"  {r['case']:20} measured {r['measured'] / MiB:7.1f} MiB  "
                f"estimate {r['estimate'] / MiB:7.1f} MiB  x{ratio:4.2f}  {r['seconds']:.2f}s  "
                f"object {r['object'] / MiB:.1f} MiB"
            )
        return
    r = run_decode_bench()
    print(f"decode bench: {int(r['n_images'])} x 4000x3000 JPEG q90 ({r['mean_jpeg_mb']:.1f} MB)")
    print(f"  full decode (target_size=None): {r['full_ms']:8.1f} ms/image")
    print(f"  draft decode (target_size={int(r['target'])}):  {r['draft_ms']:8.1f} ms/image")
    print(f"  speed-up: {r['speedup']:.1f}x")
    print(f"  (full decode, then resize to {int(r['target'])}: {r['full_resize_ms']:.1f} ms/image)")
    # To the model's input, the draft path against the full-decode path that also gets there.
    print(f"  draft ÷ full decode: {r['draft_ms'] / r['full_ms']:.2f}")
    print(
        f"  draft ÷ (full decode + resize), both to the model input: "
        f"{r['draft_ms'] / r['full_resize_ms']:.2f}"
    )
    print(
        f"  the native decoder's draft decode (left to Pillow at this size): "
        f"{r['native_draft_ms']:.1f} ms/image, {r['native_draft_ms'] / r['draft_ms']:.2f}x Pillow's"
    )
    print(f"JPEG to a {MEMORY_TARGET}-pixel input, native decoder against Pillow's way:")
    for row in run_sizes_bench(MEMORY_TARGET):
        way = "native" if row["default_native"] else "Pillow"
        print(
            f"  {int(row['width']):>5}x{int(row['height']):<5} native {row['native_ms']:7.3f} ms  "
            f"Pillow {row['pillow_ms']:7.3f} ms  ratio {row['native_ms'] / row['pillow_ms']:.2f}  "
            f"(the service: {way})"
        )


if __name__ == "__main__":
    main()
