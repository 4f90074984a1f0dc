"""The audit sink on the embedded broker, into SQLite and PostgreSQL: every distinct record
stored once, junk skipped, offsets committed (a restarted sink stores nothing new), anchors
exported and verified; and a PostgreSQL outage mid-run (a TCP proxy cut and restored) loses and
duplicates nothing."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy.engine import make_url

from audit_support import BACKENDS, database_url, make_record
from moderator.audit.anchors import latest_anchor
from moderator.audit.models import AuditQuery
from moderator.audit.sink_input import SinkStats
from moderator.audit.store import AuditStore
from moderator.audit.verify import verify
from moderator.cli.audit_sink import run_audit_sink
from moderator.devstack.stack import EmbeddedStack
from moderator.settings import Settings, load_settings

TENANTS = ("kids", "news", "museum")


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "lz4"})
    for n, value in enumerate(values):
        producer.produce(topic, key=f"k{n % 97}".encode(), value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def records(n: int) -> list[bytes]:
    """Real AuditRecords; most without their policy document (the store keeps each version
    once anyway), as the embedded broker drops a partition's oldest records beyond ~5 MiB."""
    out = []
    for i in range(n):
        record = make_record(i, tenant=TENANTS[i % 3])
        if i % 50:
            del record["policy_document"]
        out.append(json.dumps(record).encode())
    return out


def sink_settings(stack: EmbeddedStack, unique: str, url: str, **more: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka.bootstrap_servers": stack.bootstrap_servers,
        "kafka.delivery": "at_least_once",
        "kafka.group_id": f"g-{unique}",
        "kafka.topics.audit": f"audit-{unique}",
        "kafka.session_timeout_ms": 6000,
        "kafka.client": {"log.connection.close": False},
        "audit.url": url,
        "audit.batch_size": 50,
        "log.level": "warning",
    }
    values.update(more)
    return load_settings(overrides=values)


class Running:
    """run_audit_sink in a thread until stopped; its stats (or its exception) afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.stats: SinkStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings) -> None:
        try:
            self.stats = run_audit_sink(settings, self.stop)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> SinkStats:
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error
        assert self.stats is not None
        return self.stats


def wait_for(what: Callable[[], bool], timeout: float, why: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why()
        time.sleep(0.1)


def committed(settings: Settings) -> dict[int, int]:
    topic = settings.kafka.topics.audit
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"{settings.kafka.group_id}-audit-sink",
        }
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        return {tp.partition: tp.offset for tp in reader.committed(parts, timeout=10)}
    finally:
        reader.close()


def end_offsets(settings: Settings) -> dict[int, int]:
    topic = settings.kafka.topics.audit
    reader = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "ends"})
    try:
        return {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(4)
        }
    finally:
        reader.close()


def event_ids(store: AuditStore) -> set[str]:
    found: list[str] = []
    cursor = None
    while True:
        page = store.query(AuditQuery(limit=1000, cursor=cursor))
        found += [row.event_id for row in page.rows]
        if page.next_cursor is None:
            assert len(found) == len(set(found))
            return set(found)
        cursor = page.next_cursor


@pytest.fixture(params=BACKENDS)
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(str(request.param), tmp_path) as url:
        yield url


def test_sink_stores_each_record_once_and_commits(
    stack: EmbeddedStack, unique: str, audit_url: str, tmp_path: Path
) -> None:
    n = 300
    values = records(n)
    duplicates = [values[i] for i in range(0, n, 15)]  # redelivered copies of 20 events
    junk = [b"{not json", b'{"schema": "moderator.audit/v1", "verdict": {}}']
    anchors = tmp_path / "anchors.jsonl"
    settings = sink_settings(
        stack, unique, audit_url, **{"audit.anchor_file": anchors, "audit.anchor_every_s": 0.2}
    )
    produce(stack.bootstrap_servers, settings.kafka.topics.audit, values + duplicates + junk)

    with AuditStore.open(audit_url) as store:
        running = Running(settings)
        wait_for(lambda: store.count() >= n, 60, lambda: (store.count(), running.error))
        wait_for(
            lambda: committed(settings) == end_offsets(settings),
            30,
            lambda: (committed(settings), end_offsets(settings)),
        )
        stats = running.finish()
        assert store.count() == n
        assert stats.inserted == n
        assert stats.duplicates == len(duplicates)
        assert stats.skipped == len(junk)
        assert stats.messages == n + len(duplicates) + len(junk)
        assert stats.retries == 0 and stats.commit_failures == 0

        assert event_ids(store) == {f"ev-{i:05d}" for i in range(n)}
        report = verify(store, latest_anchor(anchors))
        assert report.ok, report.problems
        assert report.rows_checked == n
        anchor = latest_anchor(anchors)
        assert anchor is not None and sum(h.seq for h in anchor.heads) == n

        restarted = Running(settings)  # same group: resumes at the committed offsets
        time.sleep(8)  # join the group and poll for a while
        again = restarted.finish()
        assert again.messages == 0 and again.inserted == 0
        assert store.count() == n


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
    n = 2000
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
