"""Timestamp → offset ranges and consumer-group lag on a real Apache Kafka broker (records
produced at controlled timestamps; a minimal transactional consume-produce run), and the
embedded mock cluster's unanswered timestamp lookups detected, with the scan fallback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from moderator.dev.stack import EmbeddedStack
from moderator.ingest.lag import LagError, PartitionLag, group_lag
from moderator.ingest.offsets import (
    PartitionRange,
    TopicRange,
    scan_offsets,
    time_range_offsets,
)

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

BASE_MS = int(time.time() * 1000) - 3_600_000  # recent: older records could be retention-deleted
# Per partition, the timestamps (offset order) of its records, as seconds after BASE_MS:
# in order, out of order (producer-set CreateTime), and none.
TIMESTAMPS = {0: list(range(10)), 1: [5, 1, 7, 3, 9, 2], 2: []}
WINDOWS = [(3.5, 7.5), (0, 10), (-5, 0.5), (9, 9), (9.5, 20), (2, 2.5), (-10, -5), (4, 4.1)]


def _first_at_or_after(stamps: list[int], seconds: float) -> int | None:
    return next((i for i, s in enumerate(stamps) if s >= seconds), None)


def _expected(from_s: float, to_s: float) -> tuple[PartitionRange, ...]:
    """What the module docstring promises, computed from the produced records."""
    out = []
    for partition, stamps in TIMESTAMPS.items():
        end = len(stamps)
        start = _first_at_or_after(stamps, from_s)
        stop = _first_at_or_after(stamps, to_s)
        first = end if start is None else start
        out.append(PartitionRange(partition, first, end if stop is None else stop))
    return tuple(out)


def _ms(seconds: float) -> int:
    return BASE_MS + int(seconds * 1000)


def _produce(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, stamps in TIMESTAMPS.items():
        for n, seconds in enumerate(stamps):
            producer.produce(topic, b"v%d" % n, partition=partition, timestamp=_ms(seconds))
    assert producer.flush(30) == 0


def _reader(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"offsets-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )


@pytest.fixture
def reader(apache_kafka: ApacheKafka) -> Iterator[Consumer]:
    consumer = _reader(apache_kafka.bootstrap_servers)
    yield consumer
    consumer.close()


def _create(bootstrap: str, *topics: tuple[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, n, 1) for t, n in topics], operation_timeout=30)
    for future in futures.values():
        future.result(60)


def test_time_range_offsets_are_exact(
    apache_kafka: ApacheKafka, unique: str, reader: Consumer
) -> None:
    bootstrap = apache_kafka.bootstrap_servers
    topic = f"times-{unique}"
    _create(bootstrap, (topic, len(TIMESTAMPS)))
    _produce(bootstrap, topic)
    for from_s, to_s in WINDOWS:
        found = time_range_offsets(reader, topic, _ms(from_s), _ms(to_s), timeout_s=20)
        assert found == TopicRange(topic, _ms(from_s), _ms(to_s), _expected(from_s, to_s), True)
        assert scan_offsets(reader, topic, _ms(from_s), _ms(to_s), timeout_s=20) == found

    # An open transaction: its records are past the last stable offset, so outside any range.
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"open-{unique}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"open", partition=0, timestamp=_ms(9.9))
    producer.flush(30)
    try:
        found = time_range_offsets(reader, topic, _ms(9.5), _ms(20), timeout_s=20)
        assert found.partitions[0] == PartitionRange(0, 10, 10)
    finally:
        producer.abort_transaction(30)


def test_mock_cluster_lookups_are_detected_and_scanned(stack: EmbeddedStack, unique: str) -> None:
    topic = f"times-{unique}"
    _produce(stack.bootstrap_servers, topic)  # auto-created: 4 partitions, the last one empty
    reader = _reader(stack.bootstrap_servers)
    try:
        found = time_range_offsets(reader, topic, _ms(3.5), _ms(7.5), timeout_s=20)
        assert not found.exact
        whole = [(p.start, p.end) for p in found.partitions]
        assert whole == [(0, len(s)) for s in TIMESTAMPS.values()] + [(0, 0)]
        for from_s, to_s in WINDOWS:
            scanned = scan_offsets(reader, topic, _ms(from_s), _ms(to_s), timeout_s=20)
            assert scanned.exact
            assert scanned.partitions[:3] == _expected(from_s, to_s)
    finally:
        reader.close()


# -- lag -------------------------------------------------------------------------------------


def _lag(admin: AdminClient, group: str, topic: str, **kwargs: Any) -> list[tuple[Any, ...]]:
    lags: list[PartitionLag] = group_lag(admin, group, topic, timeout_s=20, **kwargs)
    return [(x.committed, x.high_watermark, x.last_stable, x.lag, x.stable_lag) for x in lags]


def test_lag_follows_transactional_commits(apache_kafka: ApacheKafka, unique: str) -> None:
    """A minimal consume-transform-produce member: its offsets count once their transaction
    commits; aborted or open transactions leave the lag where it was."""
    bootstrap = apache_kafka.bootstrap_servers
    source, sink, group = f"lag-in-{unique}", f"lag-out-{unique}", f"lag-{unique}"
    _create(bootstrap, (source, 2), (sink, 1))
    plain = Producer({"bootstrap.servers": bootstrap})
    for n in range(20):
        plain.produce(source, b"%d" % n, partition=n % 2)
    assert plain.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert _lag(admin, group, source) == [(None, 10, 10, 10, 10)] * 2

    member = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    member.assign([TopicPartition(source, p, 0) for p in (0, 1)])
    messages: list[Any] = []
    while len(messages) < 20:
        messages += [m for m in member.consume(20, 1) if m.error() is None]
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"lag-{unique}"})
    producer.init_transactions(30)

    def transaction(positions: dict[int, int], outputs: int) -> None:
        producer.begin_transaction()
        for n in range(outputs):
            producer.produce(sink, b"out%d" % n, partition=0)
        offsets = [TopicPartition(source, p, o) for p, o in positions.items()]
        producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 30)

    try:
        transaction({0: 6, 1: 10}, 3)
        producer.commit_transaction(30)
        assert _lag(admin, group, source, require_stable=True) == [
            (6, 10, 10, 4, 4),
            (10, 10, 10, 0, 0),
        ]
        transaction({0: 10}, 2)
        producer.flush(30)
        producer.abort_transaction(30)
        assert _lag(admin, group, source, require_stable=True)[0] == (6, 10, 10, 4, 4)

        transaction({0: 10}, 2)  # left open while the lag is read
        producer.flush(30)
        assert _lag(admin, group, source)[0] == (6, 10, 10, 4, 4)  # no waiting by default
        with pytest.raises(LagError, match="transactional commit pending"):
            group_lag(admin, group, source, timeout_s=1, require_stable=True)
        # The open transaction's outputs: written (high watermark), not yet stable.
        assert _lag(admin, f"nobody-{unique}", sink) == [(None, 9, 7, 9, 7)]
        producer.commit_transaction(30)
        assert _lag(admin, group, source, require_stable=True)[0] == (10, 10, 10, 0, 0)
    finally:
        member.close()

    # The outputs: 3 records + marker, 2 aborted + marker, 2 records + marker = 10 offsets.
    assert _lag(admin, f"nobody-{unique}", sink) == [(None, 10, 10, 10, 10)]
    last_plus_one = _read_and_commit(bootstrap, sink, f"records-{unique}", position=False)
    position = _read_and_commit(bootstrap, sink, f"position-{unique}", position=True)
    assert (last_plus_one, position) == (9, 10)
    assert _lag(admin, f"records-{unique}", sink) == [(9, 10, 10, 1, 1)]  # the last marker
    assert _lag(admin, f"position-{unique}", sink) == [(10, 10, 10, 0, 0)]


def _read_and_commit(bootstrap: str, topic: str, group: str, *, position: bool) -> int:
    """Read `topic` [0] to its end with read_committed and commit like the audit sink does
    (last record + 1) or the consumer's position; the committed offset."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        offsets: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = consumer.consume(50, 0.5)
            offsets += [m.offset() for m in batch if m.error() is None]
            if any(m.error() is not None for m in batch):  # partition EOF
                break
        assert offsets == [0, 1, 2, 7, 8]  # the aborted records (4, 5) and markers skipped
        end = consumer.position([TopicPartition(topic, 0)])[0].offset
        committed: int = end if position else offsets[-1] + 1
        consumer.commit(offsets=[TopicPartition(topic, 0, committed)], asynchronous=False)
        return committed
    finally:
        consumer.close()
