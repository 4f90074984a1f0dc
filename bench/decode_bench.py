"""How much JPEG draft decoding saves on 12-megapixel photos: full decode vs target size."""

from __future__ import annotations

import io
import random
import statistics
import time

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from moderator.fetch.decode import DecodeLimits, decode_image

SIZE = (4000, 3000)
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


def _ms_per_image(
    images: list[bytes], target: int | None, resize_after: int | None = None
) -> float:
    times = []
    for data in images:
        t0 = time.perf_counter()
        frame = decode_image(data, LIMITS, target).frames[0]
        if resize_after is not None:
            frame.thumbnail((resize_after, resize_after))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.mean(times)


def run_decode_bench(n_images: int = 5, target: int = 448) -> dict[str, float]:
    """Decode n 12 MP JPEGs in full and at `target`; ms/image for both and the speed-up.

    `full_resize_ms` adds the naive alternative to drafting: decode in full, then resize.
    """
    images = [make_photo(seed) for seed in range(n_images)]
    _ms_per_image(images[:1], None)  # warm-up: plugin imports, allocator
    full = _ms_per_image(images, None)
    draft = _ms_per_image(images, target)
    full_resize = _ms_per_image(images, None, resize_after=target)
    return {
        "n_images": float(n_images),
        "target": float(target),
        "mean_jpeg_mb": statistics.mean(len(d) for d in images) / 1e6,
        "full_ms": full,
        "draft_ms": draft,
        "speedup": full / draft,
        "full_resize_ms": full_resize,
    }


def main() -> None:
    """Run the bench with its defaults and print the figures."""
    r = run_decode_bench()
    print(f"decode bench: {int(r['n_images'])} x 4000x3000 JPEG q90 ({r['mean_jpeg_mb']:.1f} MB)")
    print(f"  full decode (target_size=None): {r['full_ms']:8.1f} ms/image")
    print(f"  draft decode (target_size={int(r['target'])}):  {r['draft_ms']:8.1f} ms/image")
    print(f"  speed-up: {r['speedup']:.1f}x")
    print(f"  (full decode, then resize to {int(r['target'])}: {r['full_resize_ms']:.1f} ms/image)")


if __name__ == "__main__":
    main()
