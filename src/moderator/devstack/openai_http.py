"""The HTTP side of the devstack OpenAI test server: a keep-alive request handler that routes
`GET /v1/models` and `POST /v1/chat/completions`, reads JSON bodies, checks the bearer token
and answers injected faults, plus the bookkeeping that lets the server cut open connections
when it stops.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from moderator.devstack.openai_protocol import RequestRejected, error_body

API_PREFIX = "/v1"
MAX_BODY_BYTES = 64 << 20


@dataclass
class Fault:
    """An error answer injected in place of the next chat completion."""

    status: int
    message: str
    retry_after: float | None = None


class FaultRaised(Exception):
    """Raised by the chat route to answer with `fault` (and its Retry-After)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.message)
        self.fault = fault


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


def handler_class(
    *,
    chat: Callable[[Any], dict[str, Any]],
    models: Callable[[], dict[str, Any]],
    api_key: Callable[[], str | None],
    connections: Connections,
) -> type[BaseHTTPRequestHandler]:
    """A handler answering `models()` and `chat(body)` (which raises RequestRejected or
    FaultRaised), demanding the bearer token `api_key()` when it is not None."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
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
                self._send(HTTPStatus.OK, models())
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
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                self._error(
                    RequestRejected(fault.message, status=fault.status, kind="server_error"),
                    headers,
                )

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

        def _error(self, exc: RequestRejected, headers: Mapping[str, str] | None = None) -> None:
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
