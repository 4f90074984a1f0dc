"""The audit sink against the in-memory broker and an in-memory SQLite store: parsing and
skipping, idempotent batches, offsets only after the insert, outages, rebalances, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from moderator.audit.db.store import AuditStore
from moderator.audit.errors import AuditError, AuditUnavailable
from moderator.audit.models import IncomingRecord, InsertResult
from moderator.audit.sink.inputs import parse_value, sink_consumer_config
from moderator.audit.sink.loop import AuditSink
from moderator.audit.sink.wiring import run_with_audit_sink
from moderator.cli.main import main
from moderator.events.verdict import AuditRecord, InputCoords, PolicyRef, Verdict, VerdictObject
from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.memory.consumer import MemoryConsumer
from moderator.settings import Settings, load_settings
from tests.audit_fixtures import SINK_TOPIC as TOPIC

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def record_json(i: int, tenant: str = "acme") -> bytes:
    verdict = Verdict(
        event_id=f"e-{i:05d}",
        tenant_id=tenant,
        object=VerdictObject(bucket="uploads", key=f"{tenant}/{i}.jpg"),
        decision="allow",
        assessment=None,
        policy=PolicyRef(tenant_id=tenant, surface="default", version="0123456789abcdef"),
        model=None,
        decided_at=T0 + timedelta(seconds=i),
        trace_id="0" * 32,
    )
    audit = AuditRecord(
        verdict=verdict,
        uploaded_at=None,
        context={},
        input=InputCoords(topic="uploads", partition=0, offset=i),
        instance_id="pod-0",
        package_version="0",
        policy_hash="f" * 64,
        prompt_sha256=None,
    )
    return audit.to_json()


def settings(**over: Any) -> Settings:
    base: dict[str, Any] = {
        "kafka.group_id": "g",
        "kafka.topics.audit": TOPIC,
        "audit.batch_size": 7,
        "instance_id": "t",
    }
    base.update(over)
    return load_settings(overrides=base)


def consumer(broker: MemoryBroker, s: Settings) -> MemoryConsumer:
    return broker.consumer(sink_consumer_config(s))


def ends(broker: MemoryBroker) -> dict[tuple[str, int], int]:
    return {(TOPIC, p): broker.end_offset(TOPIC, p) for p in range(4)}


def committed(broker: MemoryBroker, group: str = "g-audit-sink") -> dict[tuple[str, int], int]:
    found = {(TOPIC, p): broker.committed_offset(group, TOPIC, p) for p in range(4)}
    return {tp: o for tp, o in found.items() if o is not None}


def drain(sink: AuditSink, broker: MemoryBroker, limit: int = 200) -> None:
    for _ in range(limit):
        sink.step()
        if sink.committed == {tp: o for tp, o in ends(broker).items() if o}:
            return
    raise AssertionError(f"not drained: {sink.committed} vs {ends(broker)}")


def test_parse_value_accepts_audit_records_only() -> None:
    assert parse_value(record_json(1))["verdict"]["event_id"] == "e-00001"
    for bad in (b"", None, b"{nope", b"[1]", b'{"schema": "moderator.verdict/v1"}', b"\xff"):
        with pytest.raises(ValueError):
            parse_value(bad)


def test_consumer_config_has_its_own_group_and_read_committed() -> None:
    conf = sink_consumer_config(settings())
    assert conf["group.id"] == "g-audit-sink"
    assert conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] is False
    assert conf["auto.offset.reset"] == "earliest"
    assert sink_consumer_config(settings(**{"audit.sink_group_id": "x"}))["group.id"] == "x"


def test_stores_each_event_once_skips_junk_and_commits(
    broker: MemoryBroker, store: AuditStore
) -> None:
    for i in range(40):
        broker.produce_plain(TOPIC, record_json(i), key=f"k{i}".encode())
    for i in (3, 9, 27):  # redelivered duplicates, some on another partition
        broker.produce_plain(TOPIC, record_json(i), key=b"other")
    broker.produce_plain(TOPIC, b"{not json", partition=1)
    broker.produce_plain(TOPIC, b'{"schema": "moderator.audit/v1"}', partition=2)  # no verdict
    broker.produce_plain(TOPIC, None, partition=3)  # tombstone
    s = settings()
    sink = AuditSink(s, store, consumer(broker, s), poll_timeout_s=0)
    sink.start()
    drain(sink, broker)
    sink.close()
    assert store.count() == 40
    assert (sink.stats.inserted, sink.stats.duplicates, sink.stats.skipped) == (40, 3, 3)
    assert committed(broker) == ends(broker)

    again = AuditSink(s, store, consumer(broker, s), poll_timeout_s=0)
    again.start()
    for _ in range(5):
        assert again.step() == 0
    again.close()
    assert again.stats.messages == 0 and store.count() == 40


class Flaky:
    """Fails `failures` inserts with AuditUnavailable, noting the committed offsets each time."""

    def __init__(self, store: AuditStore, failures: int, on_fail: Callable[[], None]) -> None:
        self.store, self.failures, self.on_fail = store, failures, on_fail
        self.calls = 0

    def insert(self, items: Sequence[IncomingRecord]) -> InsertResult:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            self.on_fail()
            raise AuditUnavailable("database went away")
        return self.store.insert(items)


def test_outage_retries_the_same_batch_paused_and_commits_after(
    broker: MemoryBroker, store: AuditStore
) -> None:
    for i in range(5):
        broker.produce_plain(TOPIC, record_json(i), partition=0)
    s = settings()
    c = consumer(broker, s)
    seen: list[tuple[dict[Any, int], int]] = []
    flaky = Flaky(store, 3, lambda: seen.append((committed(broker), len(c._paused))))
    sink = AuditSink(s, flaky, c, poll_timeout_s=0, backoff_initial_s=0.01, backoff_max_s=0.02)
    sink.start()
    broker.produce_plain(TOPIC, record_json(99), partition=1)  # arrives during the outage
    drain(sink, broker)
    assert store.count() == 6
    assert sink.stats.retries == 3 and flaky.calls >= 4
    assert [offsets for offsets, _ in seen] == [{}, {}, {}]  # nothing committed while failing
    assert seen[-1][1] == 4  # all assigned partitions paused while retrying
    assert not c._paused  # resumed afterwards


def test_stop_during_outage_abandons_the_batch_uncommitted(
    broker: MemoryBroker, store: AuditStore
) -> None:
    broker.produce_plain(TOPIC, record_json(1), partition=0)
    s = settings()
    stop = threading.Event()
    flaky = Flaky(store, 10**6, stop.set)
    sink = AuditSink(s, flaky, consumer(broker, s), poll_timeout_s=0, grace_s=0.1)
    stats = sink.run(stop)
    assert stats.abandoned == 1 and store.count() == 0
    assert committed(broker) == {}


def test_revoked_partitions_leave_the_retried_batch(
    broker: MemoryBroker, store: AuditStore
) -> None:
    for i in range(8):
        broker.produce_plain(TOPIC, record_json(i), partition=i % 4)
    s = settings(**{"audit.batch_size": 100})
    first = consumer(broker, s)
    second: list[AuditSink] = []

    def join_second() -> None:  # a second member joins while the first retries
        if not second:
            sink2 = AuditSink(s, store, consumer(broker, s), poll_timeout_s=0)
            sink2.start()
            second.append(sink2)

    flaky = Flaky(store, 2, join_second)
    sink = AuditSink(s, flaky, first, poll_timeout_s=0, backoff_initial_s=0.01)
    sink.start()
    sink.step()
    kept = set(sink.committed)
    assert len(kept) == 2, sink.committed  # it committed only what it still owns
    for _ in range(20):
        second[0].step()
    assert set(second[0].committed) == {(TOPIC, p) for p in range(4)} - kept
    assert store.count() == 8
    assert committed(broker) == ends(broker)


def test_store_errors_other_than_outages_propagate(broker: MemoryBroker) -> None:
    class Broken:
        def insert(self, items: Sequence[IncomingRecord]) -> InsertResult:
            raise AuditError("constraint")

    broker.produce_plain(TOPIC, record_json(1), partition=0)
    s = settings()
    sink = AuditSink(s, Broken(), consumer(broker, s), poll_timeout_s=0)
    with pytest.raises(AuditError):
        sink.run(threading.Event())
    assert committed(broker) == {}


def test_anchor_is_written_when_due_and_on_close(broker: MemoryBroker, store: AuditStore) -> None:
    calls: list[int] = []
    s = settings(**{"audit.anchor_every_s": 0.001})
    sink = AuditSink(
        s, store, consumer(broker, s), anchor=lambda: calls.append(1), poll_timeout_s=0
    )
    sink.start()
    sink.step()
    assert calls == []  # nothing inserted yet: no anchor
    broker.produce_plain(TOPIC, record_json(1), partition=0)
    sink.step()
    assert calls == [1]
    broker.produce_plain(TOPIC, record_json(2), partition=0)
    sink._s = settings(**{"audit.anchor_every_s": 3600})
    sink.step()
    sink.close()  # rows since the last anchor: one more on the way out
    assert calls == [1, 1] and sink.stats.anchors == 2


def test_with_audit_sink_failure_stops_the_consumer_and_is_raised() -> None:
    s = settings(**{"audit.url": "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"})
    stop = threading.Event()
    served: list[bool] = []

    def serve() -> None:  # stands in for run_service: returns once stop is set
        served.append(stop.wait(30))

    with pytest.raises(AuditUnavailable):
        run_with_audit_sink(s, stop, serve)
    assert served == [True]


def test_cli_has_audit_sink_and_run_with_audit_sink(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["audit", "sink", "--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "audit-sink" in out and "--with-audit-sink" in out


def test_with_audit_sink_stores_the_records_the_consumer_wrote_while_draining(
    broker: MemoryBroker, store: AuditStore
) -> None:
    s = settings()
    stop = threading.Event()
    for i in range(10):
        broker.produce_plain(TOPIC, record_json(i), key=f"k{i}".encode())

    def serve() -> None:  # stands in for run_service: its drain writes after the stop
        stop.wait(30)
        for i in range(10, 30):
            broker.produce_plain(TOPIC, record_json(i), key=f"k{i}".encode())

    threading.Timer(0.3, stop.set).start()
    run_with_audit_sink(s, stop, serve, store=store, consumer=consumer(broker, s))
    assert store.count() == 30
    assert committed(broker) == {tp: o for tp, o in ends(broker).items() if o}


class NeverAssignedConsumer:
    """Test double: a consumer the group never gives a partition."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        time.sleep(min(timeout, 0.05))
        return []

    def close(self) -> None:
        pass


def test_with_audit_sink_waits_at_most_the_grace_period_to_catch_up(store: AuditStore) -> None:
    s = settings(**{"flow.drain_grace_s": 1.0})
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    run_with_audit_sink(s, stop, lambda: None, store=store, consumer=NeverAssignedConsumer())
    assert 1.0 <= time.monotonic() - started < 10


@pytest.mark.usefixtures("info_logs")
def test_records_deleted_by_retention_before_the_sink_read_them_are_reported(
    broker: MemoryBroker, store: AuditStore
) -> None:
    """The group committed offset 5 of partition 0, then the sink was down while retention
    deleted offsets up to 8: the records 5-7 never reach the store, and the sink says so when it
    gets the partition back, with a metric, instead of resuming at 8 without a word."""
    from structlog.testing import capture_logs

    from moderator.audit.sink.observe import SinkObserver
    from moderator.obs.telemetry import Telemetry

    for i in range(5):
        broker.produce_plain(TOPIC, record_json(i), partition=0)
    s = settings()
    sink = AuditSink(s, store, consumer(broker, s), poll_timeout_s=0)
    sink.start()
    drain(sink, broker)
    sink.close()
    for i in range(5, 10):
        broker.produce_plain(TOPIC, record_json(i), partition=0)
    broker.delete_records(TOPIC, 0, 8)
    telemetry = Telemetry()
    again = AuditSink(
        s, store, consumer(broker, s), poll_timeout_s=0, observer=SinkObserver(telemetry.metrics)
    )
    with capture_logs() as logs:
        again.start()
        drain(again, broker)
    again.close()
    assert store.count() == 7  # 0-4, then 8 and 9
    [line] = [entry for entry in logs if entry["event"] == "audit_records_expired"]
    assert (line["partition"], line["committed"], line["low_watermark"], line["offsets"]) == (
        0,
        5,
        8,
        3,
    )
    assert line["log_level"] == "error"
    scraped = telemetry.scrape().decode()
    assert 'moderator_audit_expired_offsets_total{partition="0",topic="' in scraped
    assert f'topic="{TOPIC}"}} 3.0' in scraped
