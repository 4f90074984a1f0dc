"""A TCP port in front of a server that can be switched off and on: off, nothing listens (a
connection is refused) and the connections it passed on are cut, as when a server goes away;
hung, connections are accepted and never answered, as by a server that is stuck."""

from __future__ import annotations

import contextlib
import socket
import threading


class SwitchPort:
    """Passes connections to 127.0.0.1:`target` while on (it starts on); `url(path)` is the
    switchable address."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._hung = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._serve(self._server)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self) -> None:
        self._cut()
        with self._lock:
            self._hung = False
            if self._server is None:
                self._server = socket.create_server(("127.0.0.1", self.port))
                self._serve(self._server)

    def hang(self) -> None:
        with self._lock:
            self._hung = True
        self._cut()

    def off(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):  # wakes the accepting thread (Linux)
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            cut, self._open = self._open, set()
        for conn in cut:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _serve(self, server: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                near, _ = server.accept()
            except OSError:
                return
            with self._lock:
                if self._hung:  # held open, never answered
                    self._open.add(near)
                    continue
            try:
                far = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                near.close()
                continue
            with self._lock:
                self._open.update((near, far))
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
