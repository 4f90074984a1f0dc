"""The exactly-once scenarios' World on a real Apache Kafka broker (tests/eos_scenarios.py)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from moderator.ingest.ports import Consumer as ConsumerPort
from moderator.ingest.ports import Producer as ProducerPort
from tests.eos_scenarios import PARTITIONS, Names
from tests.harness import write_policies

if TYPE_CHECKING:
    from moderator.dev.stack import EmbeddedStack

# Heartbeats every 0.5 s, so that members learn of a rebalance quickly (the broker's minimum
# session timeout, 6 s, is what a member that vanished costs the group), and short retry
# backoffs, so that a restarted producer gets its id as soon as the coordinator has aborted its
# predecessor's transaction. Timing only: the protocol is the one users run.
REPO = Path(__file__).resolve().parent.parent

CONSUMER_TIMING = {"heartbeat.interval.ms": 500}
CLIENT_TIMING = {"retry.backoff.ms": 20, "retry.backoff.max.ms": 250, "log.connection.close": False}


class KafkaWorld:
    """Topics, clients and a read_committed reader on the brokers at `bootstrap`."""

    def __init__(self, bootstrap: str, partitions: int = PARTITIONS) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._watermarks = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"watermarks-{uuid.uuid4().hex[:8]}"}
        )

    def close(self) -> None:
        self._watermarks.close()

    def settings(self) -> dict[str, Any]:
        return {
            "kafka.bootstrap_servers": self.bootstrap,
            "kafka.session_timeout_ms": 6000,
            "kafka.client": dict(CLIENT_TIMING),
        }

    def create_topics(self, names: Sequence[str]) -> None:
        futures = self.admin.create_topics(
            [NewTopic(name, self.partitions) for name in names], operation_timeout=30
        )
        for future in futures.values():
            future.result(60)

    def produce_inputs(self, topic: str, messages: Sequence[tuple[int, bytes, bytes]]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        for partition, key, value in messages:
            producer.produce(topic, value=value, key=key, partition=partition)
            producer.poll(0)
        assert producer.flush(30) == 0

    def consumer(self, config: dict[str, Any]) -> ConsumerPort:
        return cast(ConsumerPort, Consumer({**config, **CONSUMER_TIMING}))

    def producer(self, config: dict[str, Any]) -> ProducerPort:
        return cast(ProducerPort, Producer(config))

    def read(
        self, topics: Sequence[str], timeout_s: float = 30
    ) -> dict[str, list[tuple[int, bytes]]]:
        """(partition, value) of every committed record, as a read_committed reader sees them."""
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
            }
        )
        parts = [(t, p) for t in topics for p in range(self.partitions)]
        try:
            reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in parts])
            open_parts = set(parts)
            out: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
            deadline = time.monotonic() + timeout_s
            while open_parts:
                assert time.monotonic() < deadline, f"no end in sight for {sorted(open_parts)}"
                for msg in reader.consume(1000, 0.1):
                    err = msg.error()
                    topic, partition = str(msg.topic()), int(msg.partition() or 0)
                    if err is None:
                        out[topic].append((partition, msg.value() or b""))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((topic, partition))
                    else:
                        raise KafkaException(err)
            return out
        finally:
            reader.close()

    def committed(self, group: str, topic: str, *, stable: bool = True) -> dict[int, int | None]:
        """The group's committed offsets; with `stable`, raises while a transaction holds
        pending ones, else leaves those out."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in range(self.partitions)]
        )
        futures = self.admin.list_consumer_group_offsets([request], require_stable=stable)
        result = futures[group].result(15)
        out: dict[int, int | None] = {}
        for tp in result.topic_partitions:
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out

    def ends(self, topic: str) -> dict[int, int]:
        # A consumer's watermark query follows leader changes; the admin client's ListOffsets
        # keeps asking a restarted node's stale epoch (FENCED_LEADER_EPOCH) for a while.
        return {
            p: self._watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in range(self.partitions)
        }


class S3Uploads:
    """seed()'s object sink: puts into the embedded S3 server, eight at a time."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self._client = stack.s3_client()
        self._pool = ThreadPoolExecutor(8)
        self._pending: list[Future[Any]] = []

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._pending.append(
            self._pool.submit(self._client.put_object, Bucket=bucket, Key=key, Body=data)
        )

    def wait(self) -> None:
        for future in self._pending:
            future.result(60)
        self._pool.shutdown()


def slow_run_env(
    bootstrap: str,
    stack: EmbeddedStack,
    names: Names,
    workdir: Path,
    *,
    instance_id: str,
    session_timeout_ms: int,
) -> dict[str, str]:
    """The environment of a `moderator run` subprocess in exactly_once mode on the brokers at
    `bootstrap`, objects from `stack`, at about 100 events/s (the fake engine, 20 ms a batch
    of 2), so that a run can be killed long before its stream ends. The instance id, hence the
    transactional id, stays the same across restarts."""
    return {
        **os.environ,
        **stack.env(),
        **names.env(),
        "PYTHONPATH": str(REPO),
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MODERATOR_KAFKA__DELIVERY": "exactly_once",
        "MODERATOR_INSTANCE_ID": instance_id,
        "MODERATOR_KAFKA__COMMIT_INTERVAL_MS": "200",
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": str(session_timeout_ms),
        "MODERATOR_KAFKA__CLIENT__LOG_LEVEL": "3",  # librdkafka: errors only
        "MODERATOR_ENGINE__KIND": "fake",
        "MODERATOR_ENGINE__FAKE__LATENCY_MS": "20",
        "MODERATOR_ENGINE__BATCH_SIZE": "2",
        "MODERATOR_POLICIES__DIR": str(write_policies(workdir / "policies")),
        "MODERATOR_LOG__LEVEL": "warning",
    }
