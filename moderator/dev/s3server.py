"""moto's S3 server on a loopback port, bound in the caller's thread.

moto's ThreadedMotoServer binds in its serving thread and waits for it without a limit: on a
port that is taken its start() never returns. werkzeug, binding itself, would print to stderr
and exit. Here the socket is bound and listening first, so a taken port is an OSError in the
caller; werkzeug serves on that socket, from a thread.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from moderator.dev.ports import LOOPBACK

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer


class S3Server:
    """moto's S3 (every moto backend, as `moto_server` serves them) on LOOPBACK:`port`; port 0
    is a free one, read back from the bound socket (no race)."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> S3Server:
        """Bind and serve. OSError when the port cannot be listened on."""
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
            listener.bind((LOOPBACK, self._port))  # OSError: the caller reports it
            listener.listen(128)
            # werkzeug serves on a duplicate of the descriptor; this one is closed here.
            self._server = make_server(
                LOOPBACK,
                self._port,
                app,
                threaded=True,
                request_handler=MotoRequestHandler,
                fd=listener.fileno(),
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="devstack-s3", daemon=True
        )
        self._thread.start()
        return self

    @property
    def endpoint_url(self) -> str:
        """http://127.0.0.1:PORT, the port the server listens on."""
        if self._server is None:
            raise RuntimeError("the S3 server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
