"""Shared by the audit sink tests: records on a topic, sink settings for the embedded stack,
a sink running in a thread, and what the group committed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from audit_support import make_record
from moderator.audit.db.store import AuditStore
from moderator.audit.models import AuditQuery
from moderator.audit.sink.inputs import SinkStats
from moderator.audit.sink.wiring import run_audit_sink
from moderator.dev.stack import EmbeddedStack
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
