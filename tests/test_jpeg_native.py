"""The native JPEG path: which files take it, and that it decodes them as Pillow does."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch import decode, jpeg_native
from moderator.fetch.decode import DecodeLimits, decode_image
from moderator.fetch.decode_cost import peak_bytes
from tests.fuzz import fuzz_settings

LIMITS = DecodeLimits(("JPEG", "PNG", "GIF", "WEBP"), max_pixels=50_000_000, max_frames=4)
ALWAYS = 1 << 62  # native_max_pixels: every plain JPEG to the native decoder


def scene(size: tuple[int, int]) -> Image.Image:
    """A smooth picture with a different colour in each corner (so turning it shows)."""
    w, h = size
    red = Image.linear_gradient("L").resize(size)
    green = red.transpose(Image.Transpose.ROTATE_90).resize(size)
    blue = Image.radial_gradient("L").resize(size)
    return Image.merge("RGB", (red, green, blue)).resize((w, h))


def jpeg(im: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def exif_block(orientation: int, order: bytes = b"II") -> bytes:
    """An APP1 EXIF payload holding one orientation tag, in either byte order."""
    e = "<" if order == b"II" else ">"
    entry = struct.pack(e + "HHIH2x", 0x0112, 3, 1, orientation)
    tiff = order + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1) + entry + b"\0" * 4
    return b"Exif\x00\x00" + tiff


@contextmanager
def native_calls() -> Iterator[list[int]]:
    """Counts the native decoder's calls."""
    calls: list[int] = []
    real = jpeg_native.simplejpeg.decode_jpeg

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jpeg_native.simplejpeg, "decode_jpeg", counting)
        yield calls


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size and a.mode == b.mode == "RGB"
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


# Which files take the native way


def test_plain_baseline_and_progressive_headers_are_read() -> None:
    baseline = jpeg_native.read_header(jpeg(scene((64, 48))))
    progressive = jpeg_native.read_header(jpeg(scene((64, 48)), progressive=True))
    grey = jpeg_native.read_header(jpeg(scene((64, 48)).convert("L")))
    assert baseline == jpeg_native.JpegHeader(64, 48, 3, False, 1)
    assert progressive == jpeg_native.JpegHeader(64, 48, 3, True, 1)
    assert grey == jpeg_native.JpegHeader(64, 48, 1, False, 1)


@pytest.mark.parametrize("order", [b"II", b"MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_in_both_byte_orders(orientation: int, order: bytes) -> None:
    data = jpeg(scene((40, 20)), exif=exif_block(orientation, order))
    header = jpeg_native.read_header(data)
    assert header is not None and header.orientation == orientation
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation  # as Pillow reads it


def test_files_pillow_must_decode_are_left_to_it() -> None:
    im = scene((32, 32))
    buffer = io.BytesIO()
    im.save(buffer, "MPO", save_all=True, append_images=[im])
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>'
    for data in (
        jpeg(im.convert("CMYK")),  # four components
        jpeg(im, xmp=xmp),  # Pillow reads an orientation from XMP too
        buffer.getvalue(),  # a multi-picture file
        b"\x89PNG\r\n\x1a\n",
        jpeg(im)[:20],  # ends before its frame header
    ):
        assert jpeg_native.read_header(data) is None


@pytest.mark.fuzz
@fuzz_settings(300)
@given(st.binary(max_size=200), st.integers(0, 400))
def test_header_walk_takes_any_bytes(noise: bytes, cut: int) -> None:
    data = jpeg(scene((16, 16)), exif=exif_block(6))
    for mangled in (b"\xff\xd8\xff" + noise, data[:cut] + noise, data[:cut] + noise + data[cut:]):
        header = jpeg_native.read_header(mangled)
        assert header is None or header.components in (1, 3)


MANGLE_BASES = (
    jpeg(scene((48, 32)), exif=exif_block(6)),
    jpeg(scene((40, 40)), progressive=True),
    jpeg(scene((30, 20)).convert("L")),
)


def outcome(data: bytes, native: bool) -> tuple[object, ...]:
    try:
        out = decode_image(data, LIMITS, 448, native_max_pixels=ALWAYS if native else 0)
    except ProcessingError as exc:
        return ("refused", exc.code)
    return ("decoded", out.width, out.height, out.frames[0])


@pytest.mark.fuzz
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF it skips
@fuzz_settings(200)
@given(
    st.sampled_from(MANGLE_BASES),
    st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mangled_jpegs_get_the_same_outcome_both_ways(
    base: bytes, edits: list[tuple[int, int]]
) -> None:
    """Every byte either way may take: the same refusal, or the same frame."""
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    native, pillow = outcome(bytes(data), True), outcome(bytes(data), False)
    assert native[:-1] == pillow[:-1]
    if native[0] == "decoded":
        assert isinstance(native[-1], Image.Image) and isinstance(pillow[-1], Image.Image)
        assert native[-1].size == pillow[-1].size
        assert mean_difference(native[-1], pillow[-1]) <= 1.0
    else:
        assert native == pillow


def test_a_plain_jpeg_is_decoded_natively_and_a_cmyk_one_by_pillow() -> None:
    with native_calls() as calls:
        decode_image(jpeg(scene((64, 64))), LIMITS, 448)
        decode_image(jpeg(scene((64, 64)).convert("CMYK")), LIMITS, 448)
        decode_image(jpeg(scene((64, 64))), LIMITS, 448, native_max_pixels=0)
    assert len(calls) == 1


def test_jpegs_over_the_native_size_go_to_pillow() -> None:
    at_most = jpeg(scene((2000, 1000)))
    over = jpeg(scene((2000, 1001)))
    assert jpeg_native.MAX_PIXELS == 2000 * 1000
    with native_calls() as calls:
        decode_image(at_most, LIMITS, 448)
    assert len(calls) == 1
    with native_calls() as calls:
        decode_image(over, LIMITS, 448)
        assert decode_image(over, LIMITS, 448, native_max_pixels=ALWAYS).format == "JPEG"
    assert len(calls) == 1


# The same result as Pillow


CASES = {
    "small": (jpeg(scene((64, 64)), quality=90), 448),
    "grey": (jpeg(scene((60, 40)).convert("L")), 448),
    "progressive": (jpeg(scene((96, 64)), progressive=True), 448),
    "4:4:4": (jpeg(scene((64, 48)), subsampling=0), 448),
    "no target": (jpeg(scene((300, 200))), None),
    **{
        f"orientation {o}": (jpeg(scene((80, 40)), exif=exif_block(o, b"MM")), 448)
        for o in range(2, 9)
    },
}


@pytest.mark.parametrize("case", CASES)
def test_native_decode_matches_pillow(case: str) -> None:
    data, target = CASES[case]
    native = decode_image(data, LIMITS, target)
    pillow = decode_image(data, LIMITS, target, native_max_pixels=0)
    assert native.frames[0].mode == "RGB"
    assert (native.format, native.width, native.height, native.frame_count, native.sha256) == (
        pillow.format,
        pillow.width,
        pillow.height,
        pillow.frame_count,
        pillow.sha256,
    )
    assert native.frames[0].size == pillow.frames[0].size
    assert mean_difference(native.frames[0], pillow.frames[0]) <= 1.0


@pytest.mark.parametrize(
    ("size", "target"), [((2400, 1600), 448), ((1000, 3000), 448), ((900, 700), 300)]
)
def test_scaled_decode_is_close_to_pillows_draft(size: tuple[int, int], target: int) -> None:
    """Both let libjpeg scale in its IDCT, Pillow by a power of two, the native decoder by the
    smallest eighth that keeps the engine's size; the frames differ by resampling only."""
    data = jpeg(scene(size), quality=92)
    native = decode_image(data, LIMITS, target, native_max_pixels=ALWAYS)
    pillow = decode_image(data, LIMITS, target, native_max_pixels=0)
    assert native.frames[0].size == pillow.frames[0].size
    assert max(native.frames[0].size) == target
    assert mean_difference(native.frames[0], pillow.frames[0]) <= 2.0


# Refusals and fallbacks as on Pillow's way


def test_a_truncated_file_is_corrupt_on_both_ways() -> None:
    data = jpeg(scene((200, 200)))[:-400]
    codes = set()
    for native in (True, False):
        with pytest.raises(ProcessingError) as caught:
            decode_image(data, LIMITS, 448, native_max_pixels=ALWAYS if native else 0)
        codes.add(caught.value.code)
    assert codes == {ErrorCode.CORRUPT_IMAGE}


def flipped_until_the_native_decoder_complains(data: bytes) -> bytes:
    """`data` with one byte of its entropy-coded data flipped, such that libjpeg reports
    corrupt data (the native decoder refuses) where Pillow still decodes the file."""
    for pos in range(data.index(b"\xff\xda") + 20, len(data) - 2):
        mangled = bytearray(data)
        mangled[pos] ^= 0xFF
        try:
            jpeg_native.simplejpeg.decode_jpeg(bytes(mangled))
        except ValueError:
            try:
                Image.open(io.BytesIO(mangled)).load()
            except OSError:
                continue
            return bytes(mangled)
    raise AssertionError("no flipped byte made the native decoder complain")


def test_a_file_the_native_decoder_complains_about_goes_to_pillow() -> None:
    data = flipped_until_the_native_decoder_complains(jpeg(scene((128, 128)), quality=95))
    with native_calls() as calls:
        native = decode_image(data, LIMITS, 448)
    pillow = decode_image(data, LIMITS, 448, native_max_pixels=0)
    assert calls == [1]
    assert native.frames[0].tobytes() == pillow.frames[0].tobytes()


def test_pixel_limit_and_work_limit_apply_to_native_decodes() -> None:
    data = jpeg(scene((400, 300)), progressive=True)
    with pytest.raises(ProcessingError) as bomb:
        decode_image(data, DecodeLimits(("JPEG",), max_pixels=100_000, max_frames=1), 448)
    assert bomb.value.code is ErrorCode.DECOMPRESSION_BOMB
    scans = data.count(b"\xff\xda")
    work_limit = DecodeLimits(("JPEG",), 50_000_000, 1, max_decoded_pixels=400 * 300 - 1)
    with pytest.raises(ProcessingError) as work:
        decode_image(data, work_limit, 448)
    assert work.value.code is ErrorCode.DECODE_TIMEOUT
    assert f"400x300 in {scans} scans" in str(work.value)


def test_cpu_deadline_applies_to_native_decodes() -> None:
    with pytest.raises(ProcessingError) as late:
        decode_image(jpeg(scene((64, 64))), DecodeLimits(("JPEG",), 10**6, 1, timeout_s=0.0), 448)
    assert late.value.code is ErrorCode.DECODE_TIMEOUT


def test_native_decode_reserves_its_planned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    reserved: list[int] = []

    @contextmanager
    def recording(_budget: object, nbytes: int) -> Iterator[None]:
        reserved.append(nbytes)
        yield

    monkeypatch.setattr(decode, "_reserved", recording)
    data = jpeg(scene((2000, 1000)), progressive=True)
    decode_image(data, LIMITS, 448)
    header = jpeg_native.read_header(data)
    assert header is not None
    shape = jpeg_native.scaled_shape(data, header, 448)
    assert shape is not None and shape[:2] == (500, 250)
    plan = decode.DecodePlan(
        format="JPEG",
        frames=(decode.FrameShape(*shape),),
        target=448,
        object_bytes=len(data),
        composited=False,
        progressive_pixels=2000 * 1000,
        components=3,
        rle=False,
    )
    assert reserved == [peak_bytes(plan)]
