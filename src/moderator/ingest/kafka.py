"""confluent-kafka client construction from the settings (the real adapters of ports.py)."""

from __future__ import annotations

from typing import Any, cast

import confluent_kafka

from moderator.ingest.ports import Consumer, Producer
from moderator.settings import Settings


def consumer_config(settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    conf = kafka.client_config()
    conf.update(
        {
            "group.id": kafka.group_id,
            "client.id": f"moderator-{settings.instance_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": kafka.queued_max_messages_kbytes,
            "session.timeout.ms": kafka.session_timeout_ms,
            "max.poll.interval.ms": kafka.max_poll_interval_ms,
        }
    )
    return conf


def producer_config(settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    conf = kafka.client_config()
    conf.update(
        {
            "client.id": f"moderator-{settings.instance_id}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # Audit records repeat their policy document; batches compress it away.
            "compression.type": "lz4",
        }
    )
    if kafka.delivery == "exactly_once":
        conf["transactional.id"] = settings.transactional_id
        conf["transaction.timeout.ms"] = kafka.transaction_timeout_ms
    return conf


def make_consumer(settings: Settings) -> Consumer:
    return cast(Consumer, confluent_kafka.Consumer(consumer_config(settings)))


def make_producer(settings: Settings) -> Producer:
    return cast(Producer, confluent_kafka.Producer(producer_config(settings)))
