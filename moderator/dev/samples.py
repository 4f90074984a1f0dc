"""Deterministic synthetic images for the demo, the dev stack and tests.

Only Pillow and the standard library's seeded `random`: the same seed gives the same bytes.
The pictures are photo-like enough to exercise decoding (gradients, shapes, noise, alpha,
animation), not to look like anything.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

KINDS = ("jpeg", "png", "gif", "webp")
GIF_FRAMES = 6

# name prefix, extension, content type, Pillow format
_FORMATS: dict[str, tuple[str, str, str, str]] = {
    "jpeg": ("photo", "jpg", "image/jpeg", "JPEG"),
    "png": ("graphic", "png", "image/png", "PNG"),
    "gif": ("anim", "gif", "image/gif", "GIF"),
    "webp": ("photo", "webp", "image/webp", "WEBP"),
}
# One block of ten in make_samples: mostly JPEG, so any ten consecutive samples hold every kind.
_BLOCK = ("jpeg",) * 6 + ("png", "png", "gif", "webp")
_SIZES = ((640, 480), (640, 480), (640, 480), (480, 640), (320, 240), (800, 600))
_COM_MAX = 65533  # largest payload of one JPEG COM segment (length field counts itself)


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    content_type: str


def make_sample(kind: str, seed: int, size: tuple[int, int] = (640, 480)) -> Sample:
    """One image of `kind` ("jpeg" | "png" | "gif" | "webp"), the same bytes for the same seed."""
    if kind not in _FORMATS:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {', '.join(KINDS)}")
    prefix, ext, content_type, fmt = _FORMATS[kind]
    rng = random.Random(f"{kind}:{seed}:{size[0]}x{size[1]}")
    buf = io.BytesIO()
    if kind == "gif":
        first, *rest = _animation(rng, size)
        first.save(
            buf, "GIF", save_all=True, append_images=rest, duration=80, loop=0, optimize=False
        )
    elif kind == "png":
        _photo(rng, size, alpha=True).save(buf, "PNG", compress_level=1)
    elif kind == "webp":
        _photo(rng, size).save(buf, "WEBP", quality=rng.randint(70, 90), method=0)
    else:
        _photo(rng, size).save(buf, fmt, quality=rng.randint(75, 92))
    return Sample(name=f"{prefix}-{seed:04d}.{ext}", data=buf.getvalue(), content_type=content_type)


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    """`n` varied samples, deterministic for `seed`; every block of ten holds each kind."""
    rng = random.Random(seed)
    kinds: list[str] = []
    while len(kinds) < n:
        block = list(_BLOCK)
        rng.shuffle(block)
        kinds.extend(block)
    return [
        make_sample(kind, seed * 100_000 + i, rng.choice(_SIZES))
        for i, kind in enumerate(kinds[:n])
    ]


def corrupt_bytes(seed: int) -> bytes:
    """A JPEG that starts like one but cannot be decoded: garbled scan data, then cut short."""
    rng = random.Random(f"corrupt:{seed}")
    data = bytearray(make_sample("jpeg", seed, (320, 240)).data)
    scan = data.find(b"\xff\xda")  # start of scan: the headers before it stay intact
    if scan < 0:  # pragma: no cover - every baseline JPEG has one
        raise AssertionError("encoder wrote no SOS marker")
    body = scan + 16
    cut = body + (len(data) - body) * rng.randint(25, 50) // 100
    for _ in range(32):
        data[rng.randrange(body, cut)] = rng.randrange(256)
    return bytes(data[:cut])


def oversized_bytes(n_bytes: int, seed: int) -> bytes:
    """A valid JPEG longer than `n_bytes`, padded with comment segments after the SOI marker."""
    rng = random.Random(f"oversized:{seed}")
    image = make_sample("jpeg", seed, (320, 240)).data
    missing = max(n_bytes + 1 - len(image), 0)
    segments: list[bytes] = []
    while missing > 0:
        payload = min(_COM_MAX, max(missing - 4, 1))
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + rng.randbytes(payload))
        missing -= payload + 4
    return image[:2] + b"".join(segments) + image[2:]


def _photo(rng: random.Random, size: tuple[int, int], *, alpha: bool = False) -> Image.Image:
    """A gradient background and a few filled shapes; photos get a little sensor-like noise."""
    w, h = size
    mask = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize(size)
    top = Image.new("RGB", size, _color(rng))
    bottom = Image.new("RGB", size, _color(rng))
    img = Image.composite(top, bottom, mask)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 9)):
        _shape(draw, rng, w, h, _color(rng))
    if alpha:  # a graphic: flat colours, so no noise (it would also make the PNG huge and slow)
        matte = Image.new("L", size, rng.randint(0, 64))
        ImageDraw.Draw(matte).ellipse(
            (w // 8, h // 8, w - w // 8, h - h // 8), fill=rng.randint(192, 255)
        )
        img.putalpha(matte)
        return img
    noise = Image.frombytes("RGB", size, rng.randbytes(w * h * 3))
    return Image.blend(img, noise, rng.uniform(0.04, 0.12))


def _animation(rng: random.Random, size: tuple[int, int]) -> list[Image.Image]:
    """Palette frames with shapes drifting across a banded background (no quantizing: fast)."""
    w, h = size
    a, b = _color(rng), _color(rng)
    palette: list[int] = []
    for i in range(128):  # indices 0-127: a ramp from a to b for the background
        palette.extend(a[c] + (b[c] - a[c]) * i // 127 for c in range(3))
    for _ in range(128):  # indices 128-255: shape colours
        palette.extend(_color(rng))
    ramp = Image.linear_gradient("L").resize(size).point(lambda v: v // 2)
    shapes = [
        (rng.randrange(128, 256), rng.randrange(w), rng.randrange(h), rng.randint(20, 90))
        for _ in range(rng.randint(3, 6))
    ]
    dx, dy = rng.randint(-40, 40) or 7, rng.randint(-30, 30) or 5
    frames = []
    for f in range(GIF_FRAMES):
        frame = Image.frombytes("P", size, ramp.tobytes())
        frame.putpalette(palette)
        draw = ImageDraw.Draw(frame)
        for index, x, y, r in shapes:
            cx, cy = (x + f * dx) % w, (y + f * dy) % h
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=index)
        frames.append(frame)
    return frames


def _shape(
    draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int, fill: tuple[int, int, int]
) -> None:
    x0, y0 = rng.randrange(w), rng.randrange(h)
    x1, y1 = x0 + rng.randint(10, w // 2), y0 + rng.randint(10, h // 2)
    kind = rng.randrange(3)
    if kind == 0:
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif kind == 1:
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        points = [(rng.randrange(w), rng.randrange(h)) for _ in range(rng.randint(3, 6))]
        draw.polygon(points, fill=fill)


def _color(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))
