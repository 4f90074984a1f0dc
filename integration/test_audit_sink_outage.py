"""The audit sink survives PostgreSQL going away mid-run (a TCP proxy the test cuts and
restores: connections drop, new ones are refused): nothing is lost, nothing duplicated."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from audit_sink_support import (
    Running,
    committed,
    end_offsets,
    event_ids,
    produce,
    records,
    sink_settings,
    wait_for,
)
from audit_support import database_url
from moderator.audit.db.store import AuditStore
from moderator.audit.integrity.verify import verify
from moderator.dev.stack import EmbeddedStack


class Proxy:
    """A TCP forwarder to PostgreSQL that the test can cut (closing every connection and
    refusing new ones) and restore on the same port: the database "restarting"."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_postgres_outage_mid_run_loses_and_duplicates_nothing(
    stack: EmbeddedStack, unique: str, tmp_path: Path
) -> None:
    n = 4000
    with database_url("postgres", tmp_path) as url:
        direct = make_url(url)
        proxy = Proxy((direct.host or "127.0.0.1", direct.port or 5432))
        via_proxy = direct.set(port=proxy.port).render_as_string(hide_password=False)
        settings = sink_settings(stack, unique, via_proxy)
        produce(stack.bootstrap_servers, settings.kafka.topics.audit, records(n))
        with AuditStore.open(url) as store:  # the test reads around the proxy
            running = Running(settings)
            wait_for(lambda: store.count() >= n // 3, 60, lambda: (store.count(), running.error))
            proxy.cut()
            time.sleep(0.5)
            during = store.count()
            time.sleep(3)  # the sink retries with backoff, partitions paused
            assert store.count() == during, "rows arrived through a cut proxy"
            assert during < n, "the outage came too late to matter"
            proxy.restore()
            wait_for(lambda: store.count() >= n, 90, lambda: (store.count(), running.error))
            wait_for(lambda: committed(settings) == end_offsets(settings), 30, lambda: "offsets")
            stats = running.finish()
            proxy.cut()
            assert store.count() == n
            assert stats.retries >= 1, stats
            assert stats.inserted + stats.duplicates == stats.messages == n
            assert event_ids(store) == {f"ev-{i:05d}" for i in range(n)}
            report = verify(store, None)
            assert report.ok and report.rows_checked == n, report.problems
