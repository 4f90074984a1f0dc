"""Synthetic sample images: deterministic, decodable as declared, and the broken ones broken."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from moderator.dev.samples import (
    KINDS,
    corrupt_bytes,
    make_sample,
    make_samples,
    oversized_bytes,
)

PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP"}
CONTENT_TYPE = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("kind", KINDS)
def test_sample_is_deterministic(kind: str) -> None:
    assert make_sample(kind, 7) == make_sample(kind, 7)
    assert make_sample(kind, 7).data != make_sample(kind, 8).data


@pytest.mark.parametrize("kind", KINDS)
def test_sample_decodes_as_declared(kind: str) -> None:
    sample = make_sample(kind, 3, (320, 200))
    img = _open(sample.data)
    assert img.format == PIL_FORMAT[kind]
    assert img.size == (320, 200)
    assert sample.content_type == CONTENT_TYPE[kind]
    assert sample.name.endswith("-0003." + ("jpg" if kind == "jpeg" else kind))


def test_png_has_alpha() -> None:
    img = _open(make_sample("png", 1).data)
    assert img.mode == "RGBA"
    low, high = img.getchannel("A").getextrema()
    assert isinstance(low, int) and isinstance(high, int) and low < high


def test_gif_is_animated() -> None:
    img = _open(make_sample("gif", 2).data)
    assert getattr(img, "is_animated", False)
    assert getattr(img, "n_frames", 1) == 6


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sample kind"):
        make_sample("bmp", 0)


def test_make_samples_mix_is_deterministic_and_varied() -> None:
    samples = make_samples(20, seed=5)
    assert samples == make_samples(20, seed=5)
    assert [s.data for s in samples] != [s.data for s in make_samples(20, seed=6)]
    assert len({s.name for s in samples}) == 20
    types = [s.content_type for s in samples]
    assert types.count("image/jpeg") > len(types) // 2
    assert {"image/png", "image/gif", "image/webp"} <= set(types)
    for sample in samples:
        assert _open(sample.data).format is not None


def test_every_ten_samples_hold_every_kind() -> None:
    types = {s.content_type for s in make_samples(10, seed=11)}
    assert types == set(CONTENT_TYPE.values())


def test_generation_is_fast() -> None:
    for kind in KINDS:
        make_sample(kind, 0)  # warm up codecs
    start = time.perf_counter()
    for seed in range(8):
        for kind in KINDS:
            make_sample(kind, seed)
    per_image = (time.perf_counter() - start) / (8 * len(KINDS))
    assert per_image < 0.05  # target is < 20 ms; headroom for slow CI machines


@pytest.mark.parametrize("seed", range(5))
def test_corrupt_bytes_look_like_jpeg_but_fail_to_load(seed: int) -> None:
    data = corrupt_bytes(seed)
    assert data == corrupt_bytes(seed)
    assert data[:3] == b"\xff\xd8\xff"
    with pytest.raises((OSError, SyntaxError)):
        _open(data)


@pytest.mark.parametrize("limit", [1, 1000, 200_000, 3 * (1 << 20)])
def test_oversized_bytes_exceed_limit_and_stay_valid_jpeg(limit: int) -> None:
    data = oversized_bytes(limit, seed=4)
    assert len(data) > limit
    assert data == oversized_bytes(limit, seed=4)
    assert data[:2] == b"\xff\xd8"
    assert _open(data).format == "JPEG"
