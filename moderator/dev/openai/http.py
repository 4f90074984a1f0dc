"""The HTTP side of the devstack OpenAI test server: a keep-alive request handler that routes
`GET /v1/models` and `POST /v1/chat/completions`, reads JSON bodies, checks the bearer token
and answers injected faults, the threaded server itself (with a listen backlog that takes a
burst of new connections), plus the bookkeeping that lets the server cut open connections
when it stops.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moderator.dev.openai.protocol import RequestRejected, error_body

API_PREFIX = "/v1"
MAX_BODY_BYTES = 64 << 20
# socketserver listens with a backlog of 5: a client opening a few dozen connections at once
# (an empty pool meeting a burst of requests) overflows it, the kernel drops the handshakes it
# has no room for, and those requests stall for a second or fail with a reset (ReadError).
# Real servers listen with far more (uvicorn: 2048); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
# What a BodyFault's padded answer says, so a client that reads it all judges it normally.
FAULT_CONTENT = '{"rating": "Safe", "category": "NA: None applying", "rationale": "padded"}'


@dataclass
class Fault:
    """An error answer injected in place of the next chat completion."""

    status: int
    message: str
    retry_after: float | None = None


@dataclass
class BodyFault:
    """A large or slow answer injected in place of the next chat completion: a `status` answer
    whose body is `size` bytes (a chat completion padded with filler, generated on the fly),
    written `chunk_bytes` at a time with `interval_s` between writes. `declare_length` sends a
    Content-Length; otherwise the body is chunked."""

    size: int
    status: int = HTTPStatus.OK
    chunk_bytes: int = 64 << 10
    interval_s: float = 0.0
    declare_length: bool = True


@dataclass
class Drop:
    """In place of the next chat completion: close the connection without answering, as a
    server does with a keep-alive connection it times out just as the client reuses it."""


class FaultRaised(Exception):
    """Raised by the chat route to answer with `fault` (and its Retry-After)."""

    def __init__(self, fault: Fault | BodyFault | Drop) -> None:
        super().__init__(fault.message if isinstance(fault, Fault) else type(fault).__name__)
        self.fault = fault


class Server(ThreadingHTTPServer):
    """A thread per connection, daemon threads, and room for a burst of new connections."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


@dataclass
class Connections:
    """The open client sockets and the handler threads serving them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sockets: set[socket.socket] = field(default_factory=set)
    handlers: set[threading.Thread] = field(default_factory=set)

    def opened(self, conn: socket.socket) -> None:
        with self.lock:
            self.sockets.add(conn)
            self.handlers = {t for t in self.handlers if t.is_alive()}
            self.handlers.add(threading.current_thread())

    def closed(self, conn: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(conn)

    def cut(self, timeout_s: float) -> None:
        """Shut down open sockets until every handler thread ended, or `timeout_s` passed: a
        keep-alive connection holds its handler thread until the peer hangs up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                open_connections = list(self.sockets)
                handlers = [t for t in self.handlers if t.is_alive()]
            if not handlers:
                break
            for conn in open_connections:
                with contextlib.suppress(OSError):  # already closed by the peer
                    conn.shutdown(socket.SHUT_RDWR)
            for thread in handlers:
                thread.join(0.1)


def padded_body(size: int, content: str) -> tuple[int, Iterator[bytes]]:
    """A chat completion answering `content`, padded with filler to `size` bytes (or the
    unpadded answer's length, if longer): its length, and its bytes in pieces of 64 KiB."""
    answer = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    head = json.dumps(answer)[:-1].encode() + b', "padding": "'
    tail = b'"}'
    filler = max(0, size - len(head) - len(tail))

    def pieces() -> Iterator[bytes]:
        yield head
        piece = b"x" * (64 << 10)
        left = filler
        while left > 0:
            yield piece[:left]
            left -= min(left, len(piece))
        yield tail

    return len(head) + filler + len(tail), pieces()


def handler_class(
    *,
    chat: Callable[[Any], dict[str, Any]],
    models: Callable[[], dict[str, Any]],
    api_key: Callable[[], str | None],
    connections: Connections,
    stopping: threading.Event,
) -> type[BaseHTTPRequestHandler]:
    """A handler answering `models()` (which may raise FaultRaised with a BodyFault) and
    `chat(body)` (which raises RequestRejected or FaultRaised), demanding the bearer token
    `api_key()` when it is not None. `stopping` cuts slow BodyFault answers short."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
        # TCP_NODELAY: the head and the body of an answer are two writes, and with Nagle's
        # algorithm the body waits for the client's delayed ACK of the head (40 ms on Linux).
        disable_nagle_algorithm = True
        server_version = "moderator-openai-test"

        def setup(self) -> None:
            super().setup()
            connections.opened(self.connection)

        def finish(self) -> None:
            connections.closed(self.connection)
            with contextlib.suppress(OSError):  # the peer or stop() closed the socket first
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests assert on responses, not on access logs

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") == f"{API_PREFIX}/models":
                try:
                    self._send(HTTPStatus.OK, models())
                except FaultRaised as exc:
                    if isinstance(exc.fault, BodyFault):
                        self._stream(exc.fault)
                    else:
                        self.close_connection = True
            else:
                self._error(RequestRejected(f"no route {self.path}", status=HTTPStatus.NOT_FOUND))

        def do_POST(self) -> None:
            body = self._read_body()
            if body is _UNREADABLE or not self._authorized():
                return
            if self.path.rstrip("/") != f"{API_PREFIX}/chat/completions":
                self._error(RequestRejected(f"no route {self.path}", status=HTTPStatus.NOT_FOUND))
                return
            try:
                self._send(HTTPStatus.OK, chat(body))
            except RequestRejected as exc:
                self._error(exc)
            except FaultRaised as exc:
                fault = exc.fault
                if isinstance(fault, BodyFault):
                    self._stream(fault)
                elif isinstance(fault, Drop):
                    self.close_connection = True  # no answer at all
                else:
                    rejected = RequestRejected(
                        fault.message,
                        status=fault.status,
                        kind="server_error",
                        retry_after=fault.retry_after,
                    )
                    self._error(rejected)

        def _stream(self, fault: BodyFault) -> None:
            """Write a BodyFault's answer; the connection closes afterwards (the client may
            well have stopped reading halfway)."""
            self.close_connection = True
            length, pieces = padded_body(fault.size, FAULT_CONTENT)
            try:
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/json")
                if fault.declare_length:
                    self.send_header("Content-Length", str(length))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in pieces:
                    for start in range(0, len(piece), fault.chunk_bytes):
                        if stopping.is_set():
                            return
                        chunk = piece[start : start + fault.chunk_bytes]
                        if fault.declare_length:
                            self.wfile.write(chunk)
                        else:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        if fault.interval_s > 0:
                            stopping.wait(fault.interval_s)
                if not fault.declare_length:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client stopped reading: what the fault is there to provoke

        def _read_body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self._error(RequestRejected("a Content-Length up to 64 MiB is required"))
                self.close_connection = True
                return _UNREADABLE
            raw = self.rfile.read(length)
            try:
                return json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._error(RequestRejected(f"the request body is not JSON: {exc}"))
                return _UNREADABLE

        def _authorized(self) -> bool:
            key = api_key()
            if key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {key}":
                return True
            self._error(
                RequestRejected(
                    "Incorrect API key provided",
                    status=HTTPStatus.UNAUTHORIZED,
                    code="invalid_api_key",
                )
            )
            return False

        def _error(self, exc: RequestRejected) -> None:
            headers = {}
            if exc.retry_after is not None:
                headers["Retry-After"] = f"{exc.retry_after:g}"
            self._send(exc.status, error_body(exc), headers)

        def _send(
            self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
        ) -> None:
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True  # the client went away (e.g. it timed out)

    return Handler


_UNREADABLE: Any = object()
