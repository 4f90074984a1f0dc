"""decode_image: formats, limits, broken files, orientation, modes, animations, downscaling."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch import decode, jpeg_native
from moderator.fetch.decode import DecodeLimits, decode_image, sample_indices, sha256_hex
from moderator.settings import FetchSettings

ALL = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
LIMITS = DecodeLimits(allowed_formats=ALL, max_pixels=64_000_000, max_frames=4)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def solid(size: tuple[int, int] = (64, 48), color: tuple[int, ...] = RED) -> Image.Image:
    return Image.new("RGB", size, color)


def split_lr(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, size[0] // 2, size[1]))
    return im


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height; its pixel data is a tiny 1x1 image's."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return data[:16] + ihdr + crc + data[33:]


def animated_gif(colors: list[tuple[int, int, int]], size: tuple[int, int] = (32, 32)) -> bytes:
    frames = [solid(size, c) for c in colors]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)


def code_of(data: bytes, limits: DecodeLimits = LIMITS, target: int | None = None) -> ErrorCode:
    with pytest.raises(ProcessingError) as info:
        decode_image(data, limits, target)
    return info.value.code


def near(pixel: Any, expected: tuple[int, ...], tol: int = 6) -> bool:
    """Lossy formats move colours a little: compare channel by channel with a tolerance."""
    return all(abs(x - y) <= tol for x, y in zip(pixel, expected, strict=True))


# Formats and the allowlist


@pytest.mark.parametrize("fmt", ALL)
def test_every_allowed_format_decodes_to_rgb(fmt: str) -> None:
    out = decode_image(encode(solid((64, 48), GREEN), fmt), LIMITS, None)
    assert out.format == fmt
    assert (out.width, out.height, out.frame_count) == (64, 48, 1)
    assert len(out.frames) == 1
    assert out.frames[0].mode == "RGB"
    assert out.frames[0].size == (64, 48)
    assert near(out.frames[0].getpixel((10, 10)), GREEN)


def test_format_outside_allowlist_is_unsupported_and_named() -> None:
    only_png = DecodeLimits(("PNG",), LIMITS.max_pixels, 4)
    with pytest.raises(ProcessingError) as info:
        decode_image(encode(solid(), "JPEG"), only_png, None)
    assert info.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert "JPEG" in info.value.message


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_pillow_knows_but_we_do_not_allow(fmt: str) -> None:
    assert code_of(encode(solid((16, 16)), fmt)) is ErrorCode.UNSUPPORTED_FORMAT


def test_disallowed_plugin_is_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    Image.init()
    _, accept = Image.OPEN["PPM"]

    def exploding(*args: Any) -> Any:
        raise AssertionError("a plugin outside the allowlist was run")

    monkeypatch.setitem(Image.OPEN, "PPM", (exploding, accept))
    assert code_of(encode(solid((8, 8)), "PPM")) is ErrorCode.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(
    "data", [b"", b"x", b"hello, this is a text file\n" * 20, b"%PDF-1.7\n" + bytes(200)]
)
def test_non_image_bytes_are_unsupported(data: bytes) -> None:
    assert code_of(data) is ErrorCode.UNSUPPORTED_FORMAT


def test_limits_from_settings() -> None:
    s = FetchSettings(
        allowed_formats=("jpeg", "PNG"),
        max_pixels=1000,
        max_frames=2,
        decode_timeout_s=3.5,
        decode_budget_bytes=64 << 20,
        max_decoded_pixels=5000,
    )
    expected = DecodeLimits(("JPEG", "PNG"), 1000, 2, 3.5, 64 << 20, 5000)
    assert DecodeLimits.from_settings(s) == expected


# Broken files


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_file_is_corrupt(fmt: str) -> None:
    noisy = Image.effect_noise((200, 150), 60).convert("RGB")
    data = encode(noisy, fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert code_of(data[: len(data) // 2]) is ErrorCode.CORRUPT_IMAGE
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_header_only_jpeg_is_corrupt() -> None:
    assert code_of(encode(solid(), "JPEG")[:20]) is ErrorCode.CORRUPT_IMAGE


def test_garbled_png_pixel_data_is_corrupt() -> None:
    data = bytearray(encode(Image.effect_noise((64, 64), 60), "PNG"))
    idat = data.index(b"IDAT") + 4
    data[idat + 10 : idat + 60] = bytes(50)
    assert code_of(bytes(data)) is ErrorCode.CORRUPT_IMAGE


def test_png_with_bad_header_crc_is_corrupt() -> None:
    data = bytearray(encode(solid(), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    assert code_of(bytes(data)) is ErrorCode.CORRUPT_IMAGE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10**6),
)
def test_mangled_images_only_ever_raise_processing_error(
    fmt: str, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(encode(split_lr((24, 16)), fmt))
    for pos, value in edits:
        data[pos % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    try:
        out = decode_image(bytes(data), LIMITS, 16)
    except ProcessingError as exc:
        assert exc.code in {
            ErrorCode.CORRUPT_IMAGE,
            ErrorCode.UNSUPPORTED_FORMAT,
            ErrorCode.DECOMPRESSION_BOMB,
        }
        assert "\n" not in exc.message
    else:
        assert all(f.mode == "RGB" and max(f.size) <= 16 for f in out.frames)


# Decompression bombs


def test_pixel_limit_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ProcessingError) as info:
        decode_image(png_header_only(10_000, 10_000), LIMITS, None)
    assert info.value.code is ErrorCode.DECOMPRESSION_BOMB
    assert "limit 64000000" in info.value.message


def test_header_far_beyond_pillows_own_limit_is_a_bomb_not_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert code_of(png_header_only(60_000, 60_000)) is ErrorCode.DECOMPRESSION_BOMB


def test_real_single_colour_bomb_compresses_small_and_is_refused() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(data) < 20_000
    small_limit = DecodeLimits(ALL, max_pixels=3000 * 3000 - 1, max_frames=4)
    assert code_of(data, small_limit) is ErrorCode.DECOMPRESSION_BOMB
    assert decode_image(data, DecodeLimits(ALL, 3000 * 3000, 4), 64).width == 3000


def test_pillow_limit_is_respected_without_being_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert code_of(encode(solid((40, 40)), "PNG")) is ErrorCode.DECOMPRESSION_BOMB
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("pillow_limit", [4000, 6000])  # 10_000 px: error, then warning
def test_pillow_bomb_error_and_warning_map_to_bomb(
    monkeypatch: pytest.MonkeyPatch, pillow_limit: int
) -> None:
    # The logical screen claims 10x10 but the frames are 100x100: Pillow grows the canvas
    # while parsing and runs its own check, before ours can see the size.
    data = bytearray(animated_gif([RED, BLUE], size=(100, 100)))
    data[6:10] = struct.pack("<HH", 10, 10)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert code_of(bytes(data)) is ErrorCode.DECOMPRESSION_BOMB


def test_a_frame_larger_than_its_header_said_is_named_in_our_terms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = bytearray(animated_gif([RED, BLUE], size=(100, 100)))
    data[6:10] = struct.pack("<HH", 10, 10)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    with pytest.raises(ProcessingError) as info:
        decode_image(bytes(data), LIMITS, 64)
    assert info.value.code is ErrorCode.DECOMPRESSION_BOMB
    assert info.value.message == (
        "a frame of 10000 pixels, larger than its header said (limit 4000)"
    )


def test_too_many_frames_is_a_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "MAX_SOURCE_FRAMES", 5)
    assert code_of(animated_gif([RED, BLUE] * 3)) is ErrorCode.DECOMPRESSION_BOMB


def test_frames_of_a_tiff_are_checked_one_by_one() -> None:
    small, huge = solid((10, 10)), Image.new("1", (200, 200))
    data = encode(small, "TIFF", save_all=True, append_images=[huge])
    limits = DecodeLimits(ALL, max_pixels=1000, max_frames=2)
    assert code_of(data, limits) is ErrorCode.DECOMPRESSION_BOMB
    assert decode_image(data, DecodeLimits(ALL, 40_000, 1), None).frame_count == 2


# EXIF orientation


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED), (1, None, None)]
)
def test_exif_orientation(
    orientation: int, top: tuple[int, ...] | None, bottom: tuple[int, ...] | None
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(split_lr((80, 40)), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data, LIMITS, None)
    frame = out.frames[0]
    if orientation == 1:
        assert (out.width, out.height) == frame.size == (80, 40)
        return
    assert top is not None and bottom is not None
    assert (out.width, out.height) == frame.size == (40, 80)
    assert near(frame.getpixel((20, 10)), top, tol=20)
    assert near(frame.getpixel((20, 70)), bottom, tol=20)


def test_exif_orientation_applies_with_downscaling() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(split_lr((800, 400)), "JPEG", exif=exif.tobytes())
    out = decode_image(data, LIMITS, 100)
    assert (out.width, out.height) == (400, 800)
    assert out.frames[0].size == (50, 100)
    assert near(out.frames[0].getpixel((25, 10)), RED, tol=20)


# Modes


def test_rgba_is_composited_on_white() -> None:
    im = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (10, 0, 20, 10))
    frame = decode_image(encode(im, "PNG"), LIMITS, None).frames[0]
    assert frame.mode == "RGB"
    assert frame.getpixel((2, 2)) == WHITE
    assert frame.getpixel((15, 2)) == BLUE


def test_half_transparent_black_becomes_grey() -> None:
    frame = decode_image(encode(Image.new("LA", (4, 4), (0, 128)), "PNG"), LIMITS, None).frames[0]
    assert near(frame.getpixel((0, 0)), (127, 127, 127), tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_on_white(fmt: str) -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (5, 0, 10, 10))
    frame = decode_image(encode(im, fmt, transparency=0), LIMITS, None).frames[0]
    assert frame.getpixel((1, 1)) == WHITE
    assert frame.getpixel((8, 1)) == GREEN


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt: str) -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), fmt)
    frame = decode_image(data, LIMITS, None).frames[0]
    assert frame.mode == "RGB"
    assert near(frame.getpixel((8, 8)), RED, tol=12)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_is_rescaled_not_clipped(fmt: str) -> None:
    data = encode(Image.new("I;16", (8, 8), 40_000), fmt)
    frame = decode_image(data, LIMITS, None).frames[0]
    assert near(frame.getpixel((0, 0)), (156, 156, 156), tol=2)


def test_eight_bit_range_in_wide_mode_is_kept() -> None:
    frame = decode_image(encode(Image.new("I;16", (8, 8), 200), "PNG"), LIMITS, None).frames[0]
    assert frame.getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize(("mode", "value", "rgb"), [("1", 1, WHITE), ("L", 77, (77, 77, 77))])
def test_bilevel_and_grey(mode: str, value: int, rgb: tuple[int, int, int]) -> None:
    frame = decode_image(encode(Image.new(mode, (8, 8), value), "PNG"), LIMITS, None).frames[0]
    assert frame.getpixel((3, 3)) == rgb


# Animations

TEN = [(i * 25, 255 - i * 25, (i * 70) % 256) for i in range(10)]


def test_sample_indices() -> None:
    assert sample_indices(10, 3) == [0, 4, 9]
    assert sample_indices(10, 1) == [0]
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(100, 4) == [0, 33, 66, 99]
    assert sample_indices(2, 2) == [0, 1]


def test_animated_gif_samples_first_middle_and_last() -> None:
    out = decode_image(animated_gif(TEN), DecodeLimits(ALL, 64_000_000, 3), None)
    assert out.format == "GIF"
    assert out.frame_count == 10
    assert len(out.frames) == 3
    seen = [f.getpixel((16, 16)) for f in out.frames]
    assert near(seen[0], TEN[0])
    assert near(seen[2], TEN[9])
    assert any(near(seen[1], TEN[i]) for i in (4, 5))
    assert len(set(seen)) == 3


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_animations_sample_first_and_last(fmt: str) -> None:
    frames = [solid((32, 32), c) for c in TEN[:5]]
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, **params)
    out = decode_image(data, DecodeLimits(ALL, 64_000_000, 2), 16)
    assert out.frame_count == 5
    assert [f.size for f in out.frames] == [(16, 16), (16, 16)]
    assert near(out.frames[0].getpixel((8, 8)), TEN[0])
    assert near(out.frames[1].getpixel((8, 8)), TEN[4])


def test_multi_page_tiff_pages_keep_their_own_sizes() -> None:
    data = encode(solid((40, 20), RED), "TIFF", save_all=True, append_images=[solid((10, 30))])
    out = decode_image(data, LIMITS, None)
    assert out.frame_count == 2
    assert [f.size for f in out.frames] == [(40, 20), (10, 30)]


# Downscaling


def test_longest_side_is_brought_down_to_target() -> None:
    out = decode_image(encode(solid((900, 300)), "PNG"), LIMITS, 300)
    assert out.frames[0].size == (300, 100)
    assert (out.width, out.height) == (900, 300)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_small_images_are_never_upscaled(fmt: str) -> None:
    out = decode_image(encode(solid((50, 30)), fmt), LIMITS, 448)
    assert out.frames[0].size == (50, 30)


def _spy_on_decoded_sizes(monkeypatch: pytest.MonkeyPatch, native: bool) -> list[tuple[int, int]]:
    """Records the size of every frame decoded, by Pillow or by the native JPEG decoder."""
    sizes: list[tuple[int, int]] = []
    if native:
        real_native = jpeg_native.simplejpeg.decode_jpeg

        def spy_native(*args: Any, **kwargs: Any) -> Any:
            array = real_native(*args, **kwargs)
            sizes.append((array.shape[1], array.shape[0]))
            return array

        monkeypatch.setattr(jpeg_native.simplejpeg, "decode_jpeg", spy_native)
        return sizes
    real = ImageFile.ImageFile.load

    def spy(im: ImageFile.ImageFile) -> Any:
        sizes.append(im.size)
        return real(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return sizes


@pytest.mark.parametrize("native", [True, False], ids=["native", "pillow"])
def test_jpeg_draft_decodes_at_reduced_scale(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    decoded_sizes = _spy_on_decoded_sizes(monkeypatch, native)
    data = encode(Image.effect_noise((2400, 1600), 40).convert("RGB"), "JPEG", quality=90)
    full = decode_image(data, LIMITS, None, native_max_pixels=1 << 62 if native else 0)
    assert set(decoded_sizes) == {(2400, 1600)}
    decoded_sizes.clear()
    small = decode_image(data, LIMITS, 100, native_max_pixels=1 << 62 if native else 0)
    assert set(decoded_sizes) == {(300, 200)}
    assert full.frames[0].size == (2400, 1600)
    assert small.frames[0].size == (100, 67)
    assert (small.width, small.height) == (2400, 1600)


# Hashing


def test_sha256_is_of_the_object_bytes() -> None:
    data = encode(solid(), "PNG")
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert decode_image(data, LIMITS, None).sha256 == hashlib.sha256(data).hexdigest()
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
