"""The messages of refused files: which format they name, and how frame counts are reported."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch import decode
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.headers import apng_frames
from moderator.settings import FetchSettings
from tests.hostile_images import encode, many_frame_gif

DEFAULT = DecodeLimits.from_settings(FetchSettings())
NOTHING_ALLOWED = DecodeLimits((), DEFAULT.max_pixels, DEFAULT.max_frames)
NOT_RECOGNISED = "not a recognised image format"


def refusal(data: bytes, limits: DecodeLimits = DEFAULT) -> tuple[ErrorCode, str]:
    with pytest.raises(ProcessingError) as info:
        decode_image(data, limits, 64)
    return info.value.code, info.value.message


def small(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (16, 16), 1)


def cursor() -> bytes:
    """A Windows cursor: an icon directory of type 2 (Pillow writes icons but not cursors)."""
    icon = encode(small(), "ICO", bitmap_format="bmp")
    return icon[:2] + b"\x02" + icon[3:]


def gimp_brush() -> bytes:
    """A 2x2 grey GIMP brush, version 2 (Pillow reads brushes but does not write them)."""
    name = b"brush\x00"
    header = struct.pack(">5I", 28 + len(name), 2, 2, 2, 1) + b"GIMP" + struct.pack(">I", 10)
    return header + name + bytes(4)


def enhanced_metafile() -> bytes:
    """The header of an EMF: record type 1, and its signature at offset 40."""
    return b"\x01\x00\x00\x00" + bytes(36) + b" EMF" + bytes(60)


# -- which format a refused file is said to be ---------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_tga_is_not_called_a_cursor(mode: str) -> None:
    # A true-colour TGA header starts with the 4 bytes that Pillow's CUR sniffer looks for.
    assert refusal(encode(small(mode), "TGA")) == (ErrorCode.UNSUPPORTED_FORMAT, NOT_RECOGNISED)


def test_the_cursor_sample_is_one_pillow_reads() -> None:
    with Image.open(io.BytesIO(cursor())) as im:
        assert (im.format, im.size) == ("CUR", (16, 16))


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (cursor(), "CUR"),
        (encode(small(), "ICO"), "ICO"),
        (encode(small(), "ICO", bitmap_format="bmp"), "ICO"),
        (encode(small(), "PCX"), "PCX"),
        (encode(small("L"), "PPM"), "PPM"),
        (encode(small("1"), "PPM"), "PPM"),
        (encode(small(), "DIB"), "DIB"),
        (encode(small(), "SGI"), "SGI"),
        (encode(small("L"), "SGI", rle=True), "SGI"),
        (encode(small("1"), "XBM"), "XBM"),
        (gimp_brush(), "GBR"),
        (enhanced_metafile(), "WMF"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_real_file_of_a_refused_format_is_named(data: bytes, fmt: str) -> None:
    assert refusal(data) == (ErrorCode.UNSUPPORTED_FORMAT, f"format {fmt} is not allowed")


def test_a_refused_bmp_is_named() -> None:
    data = encode(small(), "BMP")
    assert refusal(data, NOTHING_ALLOWED) == (
        ErrorCode.UNSUPPORTED_FORMAT,
        "format BMP is not allowed",
    )


@pytest.mark.parametrize(
    "data",
    [
        b"Pfizer quarterly report\n" * 4,  # "Pf": a grey PFM to PPM's sniffer
        b"/* style */\nbody { margin: 0 }\n",  # a comment: XBM's sniffer takes it
        b"#define LIMIT 10\n",
        b"\x28" + bytes(63),  # 40, little-endian: a bitmap info header's size to DIB's
        b"\x0a\x05" + bytes(126),  # PCX's two bytes
        b"\x01\x00\x00\x00" + bytes(60),  # an EMF record type to WMF's
        b"\x00\x00\x01\x00" + bytes(60),  # an icon directory with no entries
        b"BMW owners club newsletter\n" * 4,
    ],
    ids=["PPM", "XBM-comment", "XBM-define", "DIB", "PCX", "WMF", "ICO", "BMP"],
)
def test_bytes_that_only_start_like_a_format_are_not_named_after_it(data: bytes) -> None:
    assert refusal(data, NOTHING_ALLOWED) == (ErrorCode.UNSUPPORTED_FORMAT, NOT_RECOGNISED)


@pytest.mark.parametrize(
    "data",
    [encode(small(), "TGA"), cursor(), encode(small(), "ICO"), encode(small(), "PCX")],
)
def test_naming_a_refused_format_runs_no_plugin_outside_the_allowlist(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    Image.init()
    ran: list[str] = []
    for name, (_, accept) in list(Image.OPEN.items()):
        if name not in DEFAULT.allowed_formats:

            def recording(*args: Any, name: str = name) -> Any:
                ran.append(name)
                raise SyntaxError(name)

            monkeypatch.setitem(Image.OPEN, name, (recording, accept))
    code, _ = refusal(data)
    assert code is ErrorCode.UNSUPPORTED_FORMAT
    assert ran == []


# -- frame counts -------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng_declaring(frames: int) -> bytes:
    """A valid 1x1 PNG with an acTL chunk (after IHDR, CRC right) declaring `frames` frames."""
    still = encode(Image.new("RGB", (1, 1)), "PNG")
    after_ihdr = 8 + 8 + 13 + 4
    return still[:after_ihdr] + _chunk(b"acTL", struct.pack(">II", frames, 0)) + still[after_ihdr:]


@pytest.mark.parametrize("frames", [2**31, 2**32 - 1, 10_001])
def test_an_apng_declaring_too_many_frames_is_a_bomb_named_by_its_count(frames: int) -> None:
    assert refusal(apng_declaring(frames)) == (
        ErrorCode.DECOMPRESSION_BOMB,
        f"the file declares {frames} frames (limit 10000)",
    )


def test_an_apng_declaring_no_frames_is_corrupt() -> None:
    assert refusal(apng_declaring(0)) == (
        ErrorCode.CORRUPT_IMAGE,
        "the file declares 0 frames (an image needs at least 1)",
    )


def test_the_declared_count_is_read_from_the_acTL_before_the_image_data() -> None:
    assert apng_frames(apng_declaring(7)) == 7
    still = encode(Image.new("RGB", (1, 1)), "PNG")
    assert apng_frames(still) is None
    late = still[:-12] + _chunk(b"acTL", struct.pack(">II", 0, 0)) + still[-12:]
    assert apng_frames(late) is None
    frames = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(3)]
    animated = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert apng_frames(animated) == 3
    assert decode_image(animated, DEFAULT, 64).frame_count == 3


def test_a_gif_over_the_frame_limit_is_not_given_a_count_it_may_not_have(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bounded walk stops one frame past the limit: 40 frames must not read as 6.
    monkeypatch.setattr(decode, "MAX_SOURCE_FRAMES", 5)
    assert refusal(many_frame_gif(frames=40, side=4)) == (
        ErrorCode.DECOMPRESSION_BOMB,
        "the file has more than 5 frames (limit 5)",
    )


def test_pages_over_the_frame_limit_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "MAX_SOURCE_FRAMES", 5)
    pages = [small() for _ in range(6)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert refusal(data) == (ErrorCode.DECOMPRESSION_BOMB, "the file has 6 frames (limit 5)")


def test_an_empty_object_is_named_as_empty() -> None:
    assert refusal(b"") == (ErrorCode.UNSUPPORTED_FORMAT, "the object is empty (0 bytes)")
