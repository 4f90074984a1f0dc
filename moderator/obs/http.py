"""The observability endpoint: `/metrics`, `/healthz` and `/readyz` on one port.

A stdlib threading HTTP server in daemon threads: the endpoint must answer while the consume
loop is busy and must never keep the process alive. `/healthz` answers 200 while the process
runs and its loops turn (503 naming a loop stuck in one turn, moderator/obs/liveness.py);
`/readyz` evaluates the readiness checks and answers 200 or 503 with their JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from moderator.errors import ConfigError
from moderator.listen import bind_reason, no_such_address
from moderator.obs.telemetry import Telemetry
from moderator.settings import HttpSettings

log = structlog.get_logger("moderator.obs")

REQUEST_TIMEOUT_S = 10.0  # a client that stops sending cannot hold a thread longer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    telemetry: Telemetry

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away before its answer (a probe's timeout) is not an error
        worth a traceback; anything else is logged as one line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        log.warning("http_request_failed", error=type(exc).__name__, detail=str(exc)[:200])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S
    server_version = "moderator"

    def version_string(self) -> str:
        """The Server header: the name alone (the default appends the Python version)."""
        return self.server_version

    def do_GET(self) -> None:
        telemetry = cast(_Server, self.server).telemetry
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, telemetry.scrape())
        elif path == "/healthz":
            stalled = telemetry.liveness.stalled()
            if stalled:
                self._send(503, "text/plain; charset=utf-8", "\n".join(stalled).encode() + b"\n")
            else:
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/readyz":
            ready, checks = telemetry.readiness.evaluate()
            body = {"ready": ready, "checks": {n: c.to_json() for n, c in checks.items()}}
            self._send(200 if ready else 503, "application/json", json.dumps(body).encode())
        else:
            self._send(
                404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"
            )

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes and scrapes every few seconds are not worth a log line each."""


class ObsServer:
    """The endpoint for one Telemetry, listening from construction until `close()`.

    `port` 0 asks the system for a free port (tests); the settings' 0 never gets here, it
    disables the endpoint (`serving`). A port that cannot be bound is a ConfigError.
    """

    def __init__(self, telemetry: Telemetry, host: str, port: int) -> None:
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(_bind_problem(host, port, exc)) from exc
        self._server.telemetry = telemetry
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.5,), name="obs-http", daemon=True
        )
        self._thread.start()
        log.debug("http_listening", host=host, port=self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def check_port(settings: HttpSettings) -> None:
    """ConfigError, as ObsServer would raise it, when `settings.port` cannot be listened on
    now: for commands that start other servers first (a port in use is found before they
    start, not after). Port 0 (off) passes."""
    if not settings.port:
        return
    server_class = _Server6 if ":" in settings.host else _Server
    try:
        server_class((settings.host, settings.port), _Handler).server_close()
    except OSError as exc:
        raise ConfigError(_bind_problem(settings.host, settings.port, exc)) from exc


@contextmanager
def serving(settings: HttpSettings, telemetry: Telemetry | None = None) -> Iterator[Telemetry]:
    """`telemetry` (a new one unless given) served on `settings` while the block runs; with
    port 0 nothing is served."""
    current = telemetry if telemetry is not None else Telemetry()
    server = ObsServer(current, settings.host, settings.port) if settings.port else None
    try:
        yield current
    finally:
        if server is not None:
            server.close()


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    why = bind_reason(exc)
    if no_such_address(exc):
        return (
            f"http.host: cannot listen on {host}:{port}: {why} (set http.host or "
            "MODERATOR_HTTP__HOST to an address of this machine: 0.0.0.0 for every interface, "
            "127.0.0.1 for this machine only)"
        )
    return (
        f"http.port: cannot listen on {host}:{port}: {why} (set http.port, "
        "MODERATOR_HTTP__PORT or --http-port to a free port, or 0 to turn the endpoint off)"
    )
