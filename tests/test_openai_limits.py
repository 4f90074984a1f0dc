"""The `openai` engine against answers that are too large, compressed or too slow: every one is
read with a byte cap and a deadline, ends as that item's error verdict, and costs no memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from moderator.dev.openai.server import BodyFault, OpenAITestServer, ScriptedBackend
from moderator.engine.base import EngineRequest
from moderator.engine.openai.body import AnswerTooLarge, UnreadableAnswer, read_capped
from moderator.engine.openai.engine import OpenAIEngine
from moderator.engine.openai.request import response_limit
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings, GenerationSettings, OpenAISettings

MiB = 1 << 20
SAFE = '{"rating": "Safe", "category": "NA: None applying", "rationale": "A plain square."}'
FAST: dict[str, Any] = {"backoff_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    srv = OpenAITestServer(ScriptedBackend(SAFE), model="test-guard").start()
    yield srv
    srv.stop()


def engine_for(server: OpenAITestServer, **values: Any) -> OpenAIEngine:
    settings = EngineSettings.model_validate(
        {"kind": "openai", "base_url": server.url, "model": "test-guard", **values}
    )
    return OpenAIEngine(settings, **FAST)


def request() -> EngineRequest:
    return EngineRequest("r0", Image.new("RGB", (16, 16), (1, 2, 3)), "Judge.", CATEGORIES)


def test_default_limit_follows_the_generation_settings() -> None:
    default = response_limit(GenerationSettings(), OpenAISettings())
    assert default == MiB + 512 * 6 * 512  # 2.5 MiB: 512 tokens, each with 5 alternatives
    no_scores = response_limit(GenerationSettings(), OpenAISettings(logprobs=False))
    assert no_scores == MiB + 512 * 512
    assert response_limit(GenerationSettings(), OpenAISettings(max_response_bytes=8192)) == 8192


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_answer_is_an_engine_error_and_not_retried(
    server: OpenAITestServer, declare_length: bool
) -> None:
    engine = engine_for(server, openai={"attempts": 3})
    try:
        server.stream_next(3, 64 * MiB, declare_length=declare_length)
        started = time.monotonic()
        [result] = engine.classify([request()])
        assert time.monotonic() - started < 5
    finally:
        engine.close()
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert result.error_message is not None
    assert "engine.openai.max_response_bytes" in result.error_message
    assert "not retried" in result.error_message
    assert len(server.requests) == 1


def test_an_answer_within_the_cap_is_judged(server: OpenAITestServer) -> None:
    engine = engine_for(server, openai={"max_response_bytes": 2 * MiB})
    try:
        server.stream_next(1, MiB, declare_length=False)
        [result] = engine.classify([request()])
    finally:
        engine.close()
    assert result.error_code is None
    assert result.assessment is not None and result.assessment.rating == "Safe"


def test_an_oversized_error_answer_is_cut_short(server: OpenAITestServer) -> None:
    """Only the first 64 KiB of an error answer are read: this one would take 16 s in all."""
    engine = engine_for(server, timeout_s=5, openai={"attempts": 2})
    try:
        server.stream_next(2, 100 * MiB, status=500, interval_s=0.01, declare_length=False)
        started = time.monotonic()
        [result] = engine.classify([request()])
        assert time.monotonic() - started < 2
    finally:
        engine.close()
    assert result.error_code is ErrorCode.ENGINE_ERROR
    assert result.error_message is not None
    assert "HTTP 500" in result.error_message and "2 attempts" in result.error_message
    assert len(result.error_message) < 600


def test_a_trickling_answer_hits_the_item_deadline(server: OpenAITestServer) -> None:
    engine = engine_for(server, timeout_s=0.5)
    try:
        server.stream_next(1, 100 * MiB, chunk_bytes=16, interval_s=0.02, declare_length=False)
        started = time.monotonic()
        [result] = engine.classify([request()])
        elapsed = time.monotonic() - started
    finally:
        engine.close()
    assert result.error_code is ErrorCode.ENGINE_TIMEOUT
    assert elapsed < 2.5


def test_an_oversized_model_list_fails_start_up_with_one_line(server: OpenAITestServer) -> None:
    server.models_fault = BodyFault(64 * MiB, declare_length=False)
    with pytest.raises(ConfigError, match="max_response_bytes") as caught:
        engine_for(server)
    assert "\n" not in str(caught.value)


# -- the bounded reader, on its own ------------------------------------------------------------


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def _read(chunks: list[bytes], limit: int, *, truncate: bool = False, **headers: str) -> bytes:
    import asyncio

    response = httpx.Response(200, headers=headers, stream=_Stream(chunks))
    return asyncio.run(read_capped(response, limit, truncate=truncate))


def test_a_compression_bomb_is_capped_on_decoded_bytes() -> None:
    bomb = gzip.compress(b"\0" * (64 * MiB))  # ~64 KiB on the wire
    pieces = [bomb[i : i + 65536] for i in range(0, len(bomb), 65536)]
    with pytest.raises(AnswerTooLarge):
        _read(pieces, MiB, **{"Content-Encoding": "gzip"})
    small = {"choices": []}
    deflated = zlib.compress(json.dumps(small).encode())
    assert json.loads(_read([deflated], MiB, **{"Content-Encoding": "deflate"})) == small
    with pytest.raises(UnreadableAnswer, match="Content-Encoding"):
        _read([b"x"], MiB, **{"Content-Encoding": "br"})
    with pytest.raises(UnreadableAnswer, match="corrupt"):
        _read([b"not gzip"], MiB, **{"Content-Encoding": "gzip"})


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(AnswerTooLarge, match="5000000 bytes"):
        _read([], 1000, **{"Content-Length": "5000000"})
    assert _read([b"abc", b"def"], 4, truncate=True) == b"abcd"


_RSS_PROBE = """
import resource, sys
from PIL import Image
from moderator.dev.openai.server import OpenAITestServer, ScriptedBackend
from moderator.engine.base import EngineRequest
from moderator.engine.openai.engine import OpenAIEngine
from moderator.events.verdict import CATEGORIES
from moderator.settings import EngineSettings

size = int(sys.argv[1])
with OpenAITestServer(ScriptedBackend("{}"), model="m") as server:
    settings = EngineSettings.model_validate(
        {"kind": "openai", "base_url": server.url, "model": "m"}
    )
    engine = OpenAIEngine(settings, backoff_s=0.01, backoff_max_s=0.05)
    request = EngineRequest("r", Image.new("RGB", (16, 16)), "Judge.", CATEGORIES)
    engine.classify([request])  # warm: imports, connection pool
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    server.stream_next(1, size, declare_length=False)
    [result] = engine.classify([request])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    engine.close()
print(result.error_code, (after - before) // 1024)
"""


def test_a_300_mib_answer_costs_no_memory() -> None:
    """In a fresh process (peak RSS is per process): a 300 MiB chunked answer, generated on
    the fly by the test server, raises the peak by a few MiB at most."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(300 * MiB)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    code, grown_mib = done.stdout.split()
    assert code == "engine_error"
    assert int(grown_mib) < 32
