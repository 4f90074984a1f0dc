"""Decode memory budget and decode deadline: reservations, fairness, many-frame animations."""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import threading
import time
import zlib
from typing import Any

import pytest
from PIL import GifImagePlugin, Image, ImageFile

from moderator.errors import SECURITY_ERRORS, ErrorCode, ProcessingError
from moderator.fetch import decode
from moderator.fetch.budget import DecodeBudget
from moderator.fetch.decode import SCANS_PER_PASS, DecodeLimits, decode_image
from moderator.fetch.prescan import scan_gif
from moderator.settings import FetchSettings
from tests.hostile_images import encode, flat_png, many_frame_gif

MiB = 1 << 20
ALL = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
LIMITS = DecodeLimits(ALL, 64_000_000, 4)


def code_and_message(data: bytes, limits: DecodeLimits, budget: DecodeBudget | None = None) -> Any:
    with pytest.raises(ProcessingError) as info:
        decode_image(data, limits, 448, budget)
    return info.value.code, info.value.message


# -- the budget on its own ----------------------------------------------------------------------


def test_a_reservation_larger_than_the_whole_budget_fails_at_once() -> None:
    budget = DecodeBudget(100 * MiB, max_wait_s=30)
    started = time.monotonic()
    with pytest.raises(ProcessingError) as info, budget.reserve(101 * MiB):
        pass
    assert time.monotonic() - started < 0.5
    assert info.value.code is ErrorCode.DECOMPRESSION_BOMB
    assert "fetch.decode_budget_bytes" in info.value.message
    assert budget.used == 0


def test_concurrent_reservations_never_exceed_the_budget() -> None:
    total = 1000
    budget = DecodeBudget(total, max_wait_s=30)
    lock = threading.Lock()
    held = [0]
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                n = rng.randrange(1, total + 1)
                with budget.reserve(n):
                    with lock:
                        held[0] += n
                        seen.append(held[0])
                    time.sleep(rng.random() / 2000)
                    with lock:
                        held[0] -= n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a reservation never came"
    assert not errors
    assert len(seen) == 16 * 40
    assert max(seen) <= total
    assert budget.peak <= total
    assert budget.used == 0


def test_first_come_first_served_a_large_reservation_is_not_starved() -> None:
    budget = DecodeBudget(100, max_wait_s=30)
    order: list[str] = []
    first = budget.reserve(60)
    first.__enter__()

    def take(name: str, n: int) -> None:
        with budget.reserve(n):
            order.append(name)

    big = threading.Thread(target=take, args=("big", 80))
    big.start()
    time.sleep(0.1)  # big is queued before small
    small = threading.Thread(target=take, args=("small", 10))
    small.start()
    time.sleep(0.1)
    assert order == []  # small would fit now, but big came first
    first.__exit__(None, None, None)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]


def test_waiting_is_bounded_and_leaves_nothing_behind() -> None:
    budget = DecodeBudget(100, max_wait_s=0.2)
    with budget.reserve(90):
        started = time.monotonic()
        with pytest.raises(ProcessingError) as info, budget.reserve(20):
            pass
        assert 0.15 < time.monotonic() - started < 2
    assert info.value.code is ErrorCode.DECODE_TIMEOUT
    with budget.reserve(100):  # the one that gave up is no longer in the queue
        assert budget.used == 100
    assert budget.used == 0


def test_a_failure_inside_the_block_releases_the_reservation() -> None:
    budget = DecodeBudget(100, max_wait_s=1)
    with pytest.raises(RuntimeError), budget.reserve(70):
        raise RuntimeError("decoder failed")
    assert budget.used == 0


# -- the budget in decode_image ----------------------------------------------------------------


def test_decode_reserves_before_decoding_and_releases_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = DecodeBudget(1 << 30, max_wait_s=1)
    used_while_loading: list[int] = []
    real_load = ImageFile.ImageFile.load

    def spy(im: ImageFile.ImageFile) -> Any:
        used_while_loading.append(budget.used)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    out = decode_image(flat_png(3000, "RGBA"), LIMITS, 448, budget)
    assert out.frames[0].size == (448, 448)
    decoded_bytes = 3000 * 3000 * 4
    assert used_while_loading and min(used_while_loading) > decoded_bytes
    assert budget.used == 0
    assert budget.peak == used_while_loading[0]


def test_decode_needing_more_than_the_budget_is_a_bomb_before_any_pixel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    budget = DecodeBudget(32 * MiB, max_wait_s=1)
    code, message = code_and_message(flat_png(4000, "RGBA"), LIMITS, budget)
    assert code is ErrorCode.DECOMPRESSION_BOMB
    assert "decode budget" in message
    assert budget.used == 0


def test_a_failed_decode_releases_its_reservation() -> None:
    budget = DecodeBudget(1 << 30, max_wait_s=1)
    data = flat_png(500)
    code, _ = code_and_message(data[: len(data) // 2], LIMITS, budget)
    assert code is ErrorCode.CORRUPT_IMAGE
    assert budget.used == 0


def test_decodes_in_parallel_share_the_budget() -> None:
    """Eight threads decode 2000x2000 RGBA PNGs (about 37 MiB each by the estimate) under a
    64 MiB budget: at most one at a time holds its reservation, and all of them finish."""
    budget = DecodeBudget(64 * MiB, max_wait_s=30)
    data = flat_png(2000, "RGBA")
    results: list[Any] = []

    def run() -> None:
        results.append(decode_image(data, LIMITS, 448, budget).frames[0].size)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(448, 448)] * 8
    assert 32 * MiB < budget.peak <= 64 * MiB
    assert budget.used == 0


# -- the deadline ------------------------------------------------------------------------------


def timed_code(data: bytes, limits: DecodeLimits) -> tuple[ErrorCode, str, float]:
    """The error code and message of decoding `data`, and the CPU seconds it took (decode_image
    runs in this thread, and the deadline counts this thread's CPU time)."""
    started = time.thread_time()
    code, message = code_and_message(data, limits)
    return code, message, time.thread_time() - started


def test_many_frame_gif_stops_at_the_deadline() -> None:
    data = many_frame_gif(frames=300, side=1000)
    limits = DecodeLimits(ALL, 64_000_000, 4, timeout_s=0.3)
    code, message, cpu = timed_code(data, limits)
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "before frame" in message and "fetch.decode_timeout_s" in message
    assert 0.3 <= cpu < 0.3 + 1.0, f"{cpu:.2f}s"


def test_500_frame_gif_with_default_settings_ends_at_once_as_decode_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 1.9 MB GIF of 500 frames of 2000x2000 took 10.5 s of CPU with no way to stop it.
    Reaching its last frame means decoding 2e9 pixels, over fetch.max_decoded_pixels: it is
    refused from the header, before any frame is decoded."""

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    code, message, cpu = timed_code(many_frame_gif(), DecodeLimits.from_settings(FetchSettings()))
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "500 frames of 2000x2000" in message and "fetch.max_decoded_pixels" in message
    assert cpu < 1.0, f"{cpu:.2f}s"


def test_gif_within_the_pixel_cap_still_stops_at_the_deadline() -> None:
    """200 frames of 2000x2000 (8e8 pixels, under the default cap) with a 0.5 s deadline."""
    limits = DecodeLimits.from_settings(FetchSettings(decode_timeout_s=0.5))
    code, message, cpu = timed_code(many_frame_gif(frames=200), limits)
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "before frame" in message
    assert cpu < 0.5 + 1.0, f"{cpu:.2f}s"


def test_pages_count_towards_the_pixel_cap() -> None:
    frames = [Image.new("L", (100, 100), i) for i in range(5)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert decode_image(data, DecodeLimits(ALL, 10_000, 4, max_decoded_pixels=40_000), 32)
    code, message = code_and_message(data, DecodeLimits(ALL, 10_000, 4, max_decoded_pixels=39_999))
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "4 pages" in message


def test_the_pixel_cap_cannot_be_below_one_frame() -> None:
    with pytest.raises(ValueError, match="max_decoded_pixels must be at least max_pixels"):
        FetchSettings(max_pixels=1000, max_decoded_pixels=999)


def test_time_waiting_for_budget_is_not_decoding_time() -> None:
    """The worker waits 0.8 s for memory with a 0.5 s deadline, then decodes normally."""
    budget = DecodeBudget(64 * MiB, max_wait_s=30)
    limits = DecodeLimits(ALL, 64_000_000, 4, timeout_s=0.5)
    data = flat_png(1000)
    with budget.reserve(64 * MiB):
        result: list[Any] = []
        worker = threading.Thread(
            target=lambda: result.append(decode_image(data, limits, 64, budget))
        )
        worker.start()
        time.sleep(0.8)  # longer than the deadline
    worker.join(10)
    assert result and result[0].frames[0].size == (64, 64)


def test_animation_frames_are_visited_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks: list[int] = []
    real_seek = GifImagePlugin.GifImageFile.seek

    def spy(im: GifImagePlugin.GifImageFile, frame: int) -> None:
        seeks.append(frame)
        real_seek(im, frame)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", spy)
    out = decode_image(many_frame_gif(frames=30, side=64), LIMITS, 32)
    assert out.frame_count == 30
    assert len(out.frames) == 4
    visits = [f for f in seeks if f > 0]
    assert visits == list(range(1, 30))


def test_decode_timeout_is_a_security_error() -> None:
    assert ErrorCode.DECODE_TIMEOUT in SECURITY_ERRORS


# -- GIF layout before Pillow walks the frames ---------------------------------------------------


def test_gif_frame_count_is_capped_before_pillow_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_walk(self: GifImagePlugin.GifImageFile) -> int:
        raise AssertionError("Pillow walked the frames")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(no_walk))
    monkeypatch.setattr(decode, "MAX_SOURCE_FRAMES", 100)
    code, message = code_and_message(many_frame_gif(frames=5000, side=4), LIMITS)
    assert code is ErrorCode.DECOMPRESSION_BOMB
    assert "limit 100" in message


def _gif_with_frame_at(x: int, y: int, screen: int = 10, frame: int = 4) -> bytes:
    """Two frames on a `screen`x`screen` logical screen; the second is placed at (x, y)."""
    data = bytearray(many_frame_gif(frames=2, side=frame))
    data[6:10] = struct.pack("<HH", screen, screen)
    second = data.rindex(b",")  # the last image descriptor
    data[second + 1 : second + 5] = struct.pack("<HH", x, y)
    return bytes(data)


def test_gif_layout_grows_the_canvas_to_its_frames() -> None:
    layout = scan_gif(_gif_with_frame_at(30, 40), 100)
    assert layout is not None
    assert (layout.frames, layout.width, layout.height) == (2, 34, 44)
    assert scan_gif(b"\x89PNG\r\n\x1a\n" + bytes(20), 100) is None


def test_gif_frame_far_outside_its_screen_is_refused_from_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    code, message = code_and_message(_gif_with_frame_at(60000, 60000), LIMITS)
    assert code is ErrorCode.DECOMPRESSION_BOMB
    assert "60004x60004" in message


def test_gif_frame_sticking_out_a_little_still_decodes() -> None:
    out = decode_image(_gif_with_frame_at(30, 40), LIMITS, None)
    assert out.frame_count == 2
    assert out.frames[-1].size == (34, 44)


def test_palette_image_keeps_its_colours_when_downscaled() -> None:
    im = Image.new("P", (400, 200), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (200, 0, 400, 200))
    frame = decode_image(encode(im, "PNG"), LIMITS, 100).frames[0]
    assert frame.size == (100, 50)
    assert frame.getpixel((10, 25)) == (255, 0, 0)
    assert frame.getpixel((90, 25)) == (0, 0, 255)


# -- work that grows with structure, not pixels ----------------------------------------------


def test_jpeg_scans_count_towards_the_pixel_cap() -> None:
    """Each scan of a progressive JPEG is a pass over the whole image inside one libjpeg call,
    which nothing can interrupt: 2,000 repeats of a 36-byte scan took 20 s of CPU."""
    data = encode(Image.new("RGB", (2000, 2000), (120, 30, 200)), "JPEG", progressive=True)
    sos = data.rindex(b"\xff\xda")
    repeated = data[:-2] + data[sos:-2] * 2000 + b"\xff\xd9"
    limits = DecodeLimits.from_settings(FetchSettings())
    assert decode_image(data, limits, 448).frame_count == 1
    code, message, cpu = timed_code(repeated, limits)
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "scans" in message
    assert cpu < 0.5


def test_png_of_countless_chunks_is_refused_before_pillow_parses_them() -> None:
    """Pillow parses chunks in Python: 1,000,000 empty chunks (12 MB) took 2.9 s of CPU."""
    data = encode(Image.new("L", (8, 8)), "PNG")
    chunk = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    crowded = data[:33] + chunk * 200_000 + data[33:]
    code, message, cpu = timed_code(crowded, LIMITS)
    assert code is ErrorCode.DECODE_TIMEOUT
    assert "PNG chunks" in message
    assert cpu < 0.5
    assert decode_image(data[:33] + chunk * 1000 + data[33:], LIMITS, 8).frame_count == 1


def test_turned_cmyk_jpeg_is_turned_after_downscaling() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    im = Image.new("RGB", (800, 400), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 400, 400))
    data = encode(im.convert("CMYK"), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data, LIMITS, 100)
    frame = out.frames[0]
    assert (out.width, out.height) == (400, 800)
    assert frame.size == (50, 100)
    top, bottom = frame.getpixel((25, 10)), frame.getpixel((25, 90))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_a_sequential_jpeg_is_not_charged_for_scan_markers_in_its_metadata() -> None:
    """Only a progressive JPEG's scans are counted: a sequential one names each component in
    one scan, so its components bound its passes, whatever bytes its metadata holds."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG", comment=b"\xff\xda" * 64)
    data = buf.getvalue()
    assert data.count(b"\xff\xda") > SCANS_PER_PASS
    limits = dataclasses.replace(LIMITS, max_decoded_pixels=64 * 64)
    decoded = decode_image(data, limits, None)  # 64 x 64 pixels in one pass: within the cap
    assert (decoded.width, decoded.height) == (64, 64)


def test_repeated_scans_in_a_sequential_jpeg_cost_nothing() -> None:
    """Why a sequential JPEG's markers need no counting: libjpeg refuses a scan repeated after
    its components were read, at once (the progressive case above takes 20 s of CPU)."""
    data = encode(Image.new("RGB", (2000, 2000), (120, 30, 200)), "JPEG")
    sos = data.rindex(b"\xff\xda")
    repeated = data[:-2] + data[sos:-2] * 2000 + b"\xff\xd9"
    code, _, cpu = timed_code(repeated, DecodeLimits.from_settings(FetchSettings()))
    assert code is ErrorCode.CORRUPT_IMAGE
    assert cpu < 0.5
