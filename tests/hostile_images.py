"""Small files that are costly to decode: huge flat PNGs and many-frame GIFs (unit and
integration tests share them)."""

from __future__ import annotations

import io

from PIL import Image


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def flat_png(side: int = 7999, mode: str = "L") -> bytes:
    """A single-colour square PNG: 7999x7999 grey is about 62 KB and 61 MiB once decoded."""
    return encode(Image.new(mode, (side, side)), "PNG")


def many_frame_gif(frames: int = 500, side: int = 2000) -> bytes:
    """An animated GIF of `frames` full-canvas frames of alternating colour, built by repeating
    two encoded frames (500 frames of 2000x2000 are about 1.9 MB; Pillow decodes every frame up
    to the last one sampled)."""
    palette = [0, 0, 0, 255, 255, 255] + [0] * (768 - 6)
    bodies = []
    header = b""
    for colour in (0, 1):
        im = Image.new("P", (side, side), colour)
        im.putpalette(palette)
        data = encode(im, "GIF", optimize=False)
        header_len = 13 + 768  # screen descriptor, then the full global colour table
        if header and data[:header_len] != header:
            raise AssertionError("the two frames were saved with different headers")
        header = data[:header_len]
        bodies.append(data[header_len:-1])  # extension and image blocks, without the trailer
    return header + b"".join(bodies[i % 2] for i in range(frames)) + b";"
