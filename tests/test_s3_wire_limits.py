"""S3ObjectStore against a lying S3 endpoint on the wire (a local HTTP server, real botocore):
the body read stays within fetch.max_object_bytes whatever the server declares or sends."""

from __future__ import annotations

import functools
import gzip
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.s3 import S3ObjectStore
from moderator.settings import S3Settings

MiB = 1 << 20
LIMIT = 8 * MiB


@functools.cache
def _bomb() -> bytes:
    return gzip.compress(b"\0" * (64 * MiB))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "chunked"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("ETag", '"e"')
        piece = b"x" * (64 << 10)
        try:
            if self.mode == "chunked":  # no length at all, 300 MiB on the fly
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(300 * 16):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            elif self.mode == "short-length":  # declares 10 bytes, sends 50 MiB
                self.send_header("Content-Length", "10")
                self.end_headers()
                for _ in range(50 * 16):
                    self.wfile.write(piece)
            elif self.mode == "gzip":  # a compression bomb: stored as sent, never inflated
                body = _bomb()
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        except OSError:
            pass  # the client stopped reading


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


def _get(endpoint: str, mode: str) -> tuple[Any, int]:
    _Handler.mode = mode
    settings = S3Settings(
        endpoint_url=endpoint, region="us-east-1", addressing_style="path", max_attempts=1
    )
    store = S3ObjectStore(settings)
    tracemalloc.start()
    try:
        try:
            result: Any = store.get("uploads", "acme/a.png", None, LIMIT)
        except ProcessingError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_an_endless_chunked_body_stops_at_the_limit(endpoint: str) -> None:
    started = time.monotonic()
    result, peak = _get(endpoint, "chunked")
    assert isinstance(result, ProcessingError)
    assert result.code is ErrorCode.OBJECT_TOO_LARGE
    assert peak < 3 * LIMIT
    assert time.monotonic() - started < 10


def test_a_short_declared_length_is_all_that_is_read(endpoint: str) -> None:
    result, peak = _get(endpoint, "short-length")
    assert not isinstance(result, ProcessingError)
    assert result.data == b"x" * 10
    assert peak < 3 * LIMIT


def test_a_compressed_body_is_not_inflated(endpoint: str) -> None:
    _bomb()  # made before memory is traced: the server shares this process
    result, peak = _get(endpoint, "gzip")
    assert not isinstance(result, ProcessingError)
    assert result.data[:2] == b"\x1f\x8b" and len(result.data) < MiB
    assert peak < 3 * LIMIT
