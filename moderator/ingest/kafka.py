"""confluent-kafka client construction from the settings (the real adapters of ports.py).

librdkafka checks its configuration when a client is built; what it refuses becomes one
ConfigError line (exit 2 at start-up), never a KafkaException traceback. Its own log lines go
through structlog (ingest/client_log.py), never raw to stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import confluent_kafka

from moderator.errors import ConfigError
from moderator.ingest.client_log import client_logger
from moderator.ingest.ports import Consumer, Producer
from moderator.settings import KafkaSettings, Settings

T = TypeVar("T")


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
    if settings.group_instance_id is not None:
        conf["group.instance.id"] = settings.group_instance_id
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
    conf = consumer_config(settings)
    return cast(Consumer, build_client(confluent_kafka.Consumer, conf, settings.kafka))


def make_producer(settings: Settings) -> Producer:
    conf = producer_config(settings)
    return cast(Producer, build_client(confluent_kafka.Producer, conf, settings.kafka))


def build_client(
    factory: Callable[[dict[str, Any]], T], conf: dict[str, Any], kafka: KafkaSettings
) -> T:
    """`factory(conf)` (a confluent_kafka Consumer, Producer or AdminClient); librdkafka
    refusing the configuration raises ConfigError, one line, with the passwords of `kafka`
    masked should librdkafka quote one.

    Unless `conf` names its own `logger`, the client logs through `client_logger()`: its
    lines reach structlog when the client is polled, repeats held back."""
    try:
        return factory({"logger": client_logger(), **conf})
    except confluent_kafka.KafkaException as exc:
        error = exc.args[0] if exc.args else None
        text = error.str() if isinstance(error, confluent_kafka.KafkaError) else str(exc)
        for secret in (kafka.sasl_password, kafka.ssl_key_password):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "***")
        text = " ".join(text.split())
        raise ConfigError(
            f"kafka: librdkafka refused the client configuration: {text} "
            "(check the kafka.* settings and kafka.client)"
        ) from exc
