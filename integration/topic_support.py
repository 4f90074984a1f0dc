"""Read a topic of the embedded broker from its beginning to its current end."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 20) -> list[bytes]:
    """Every record value of `topic` so far (empty values as b""); [] when it does not exist."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return []
        consumer.assign([TopicPartition(topic, p, -2) for p in found.partitions])  # -2: start
        open_parts, out = set(found.partitions), []
        deadline = time.monotonic() + timeout_s
        while open_parts and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                err = msg.error()
                if err is None:
                    out.append(msg.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(msg.partition())
        return out
    finally:
        consumer.close()
