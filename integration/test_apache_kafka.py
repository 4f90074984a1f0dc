"""The real Apache Kafka broker: what the mock cannot show (transactions) and node failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kafka_support import broker_unavailable
from moderator.dev.errors import DevStackError
from moderator.dev.kafka.cluster import ApacheKafka
from moderator.dev.kafka.ready import PROBE_TOPIC
from moderator.errors import ConfigError

TIMEOUT_S = 30.0


def _consumer(kafka: ApacheKafka, group: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def _poll(consumer: Consumer, n: int) -> list[Message]:
    """The next `n` records (fewer if the timeout passes first)."""
    got: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    return got


def _produce(kafka: ApacheKafka, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    failures: list[object] = []
    for value in values:
        producer.produce(
            topic,
            value,
            partition=partition,
            on_delivery=lambda err, _msg: failures.append(err) if err else None,
        )
    assert producer.flush(TIMEOUT_S) == 0
    assert failures == []


def _read_partition(kafka: ApacheKafka, topic: str, n: int, *, isolation: str) -> list[bytes]:
    consumer = _consumer(kafka, f"reader-{topic}-{isolation}", **{"isolation.level": isolation})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        return [m.value() or b"" for m in _poll(consumer, n)]
    finally:
        consumer.close()


def _replicas(kafka: ApacheKafka, topic: str) -> set[int]:
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(
        topic, timeout=10
    )
    return {len(p.replicas) for p in metadata.topics[topic].partitions.values()}


def test_produce_and_consume(apache_kafka: ApacheKafka, unique: str) -> None:
    topic = f"plain-{unique}"
    _produce(apache_kafka, topic, [b"a", b"b", b"c"])
    consumer = _consumer(apache_kafka, f"g-{unique}")
    try:
        consumer.subscribe([topic])
        assert [m.value() for m in _poll(consumer, 3)] == [b"a", b"b", b"c"]
    finally:
        consumer.close()
    assert _replicas(apache_kafka, topic) == {1}
    assert _replicas(apache_kafka, PROBE_TOPIC) == {1}  # start() proved transactions work


def test_broker_log_lines_reach_the_node_log(apache_kafka: ApacheKafka) -> None:
    tail = apache_kafka.log_tail(0, lines=200)
    assert "no-operation (NOP) logger" not in tail  # slf4j found its log4j binding
    assert " WARN " in tail  # the broker warns at start-up (an empty metadata log)


def test_aborted_transaction_is_invisible_to_read_committed(
    apache_kafka: ApacheKafka, unique: str
) -> None:
    topic = f"txn-{unique}"
    producer = Producer(
        {"bootstrap.servers": apache_kafka.bootstrap_servers, "transactional.id": f"t-{unique}"}
    )
    producer.init_transactions(TIMEOUT_S)
    producer.begin_transaction()
    for value in (b"aborted-1", b"aborted-2", b"aborted-3"):
        producer.produce(topic, value, partition=0)
    producer.flush(TIMEOUT_S)
    producer.abort_transaction(TIMEOUT_S)
    producer.begin_transaction()
    for value in (b"committed-1", b"committed-2"):
        producer.produce(topic, value, partition=0)
    producer.commit_transaction(TIMEOUT_S)

    # The committed records come after the aborted ones in the log: reading them means the
    # read_committed reader has passed, and skipped, every aborted record.
    committed = _read_partition(apache_kafka, topic, 2, isolation="read_committed")
    assert committed == [b"committed-1", b"committed-2"]
    everything = _read_partition(apache_kafka, topic, 5, isolation="read_uncommitted")
    assert everything == [b"aborted-1", b"aborted-2", b"aborted-3", *committed]


def test_transactional_offsets_are_stored_on_commit_only(
    apache_kafka: ApacheKafka, unique: str
) -> None:
    source, sink, group = f"in-{unique}", f"out-{unique}", f"g-{unique}"
    _produce(apache_kafka, source, [b"x", b"y"])
    consumer = _consumer(apache_kafka, group, **{"isolation.level": "read_committed"})
    producer = Producer(
        {"bootstrap.servers": apache_kafka.bootstrap_servers, "transactional.id": f"t-{unique}"}
    )
    try:
        consumer.subscribe([source])
        got = _poll(consumer, 2)
        assert [m.value() for m in got] == [b"x", b"y"]
        positions = [TopicPartition(source, 0, 2)]
        producer.init_transactions(TIMEOUT_S)

        producer.begin_transaction()
        producer.produce(sink, b"verdict", partition=0)
        producer.send_offsets_to_transaction(
            positions, consumer.consumer_group_metadata(), TIMEOUT_S
        )
        producer.abort_transaction(TIMEOUT_S)
        stored = consumer.committed([TopicPartition(source, 0)], timeout=TIMEOUT_S)
        assert stored[0].offset == OFFSET_INVALID  # an aborted transaction stores nothing

        producer.begin_transaction()
        producer.produce(sink, b"verdict", partition=0)
        producer.send_offsets_to_transaction(
            positions, consumer.consumer_group_metadata(), TIMEOUT_S
        )
        producer.commit_transaction(TIMEOUT_S)
        stored = consumer.committed([TopicPartition(source, 0)], timeout=TIMEOUT_S)
        assert stored[0].offset == 2
    finally:
        consumer.close()
    assert _read_partition(apache_kafka, sink, 1, isolation="read_committed") == [b"verdict"]


def test_cluster_serves_through_a_killed_node(
    apache_kafka_cluster: ApacheKafka, unique: str
) -> None:
    kafka = apache_kafka_cluster
    topic = f"ha-{unique}"
    _produce(kafka, topic, [b"before"])
    assert _replicas(kafka, topic) == {3}
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(
        topic, timeout=10
    )
    leader = metadata.topics[topic].partitions[0].leader - 1  # node ids start at 1

    kafka.stop_broker(leader, kill=True)
    assert kafka.pid(leader) is None
    try:
        # acks=all with two of three replicas (min ISR 2), once the partition has a new leader.
        _produce(kafka, topic, [b"while-down"])
        producer = Producer(
            {"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": f"t-{unique}"}
        )
        producer.init_transactions(TIMEOUT_S)
        producer.begin_transaction()
        producer.produce(topic, b"txn-while-down", partition=0)
        producer.commit_transaction(TIMEOUT_S)
    finally:
        kafka.start_broker(leader)
    assert kafka.pid(leader) is not None

    _produce(kafka, topic, [b"after"])
    assert _read_partition(kafka, topic, 4, isolation="read_committed") == [
        b"before",
        b"while-down",
        b"txn-while-down",
        b"after",
    ]


def test_a_node_that_cannot_start_fails_with_its_reason(tmp_path: Path) -> None:
    kafka = ApacheKafka(1, workdir=tmp_path, config={"num.partitions": "many"})
    try:
        with pytest.raises(DevStackError, match=r"kafka node 0: .*Invalid value many") as caught:
            kafka.start()
    except ConfigError as exc:
        broker_unavailable(str(exc))
    assert "\n" not in str(caught.value)
    assert "num.partitions" in caught.value.__notes__[0]  # the log tail, for the report
    assert (tmp_path / "node-0" / "server.properties").is_file()  # a given workdir is kept


def test_a_cluster_id_starting_with_a_dash_is_formatted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random ids are base64url: about one in 64 starts with '-', which a flag parser misreads."""
    from moderator.dev.kafka import config as kafka_config

    monkeypatch.setattr(kafka_config, "new_cluster_id", lambda: "-" + "A" * 21)
    kafka = ApacheKafka(1, workdir=tmp_path)
    try:
        kafka.start()
    except ConfigError as exc:
        broker_unavailable(str(exc))
    try:
        meta = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10)
        assert meta.cluster_id == "-" + "A" * 21
    finally:
        kafka.stop()
