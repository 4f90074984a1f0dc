"""The broker check's probe answers while the consume loop is polling an idle topic.

Through the loop's own consumer, librdkafka kept the metadata request behind the `consume`
calls (on the embedded mock cluster as on Apache Kafka): `/readyz` hung for as long as the
topic stayed idle. The probe has a client of its own; this runs it beside a consumer polling
in a tight loop, as the service's loop does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer

from moderator.obs.health import Contact
from moderator.obs.probes import KafkaProbe, ProbeFailed
from moderator.settings import KafkaSettings


@pytest.fixture
def bootstrap() -> Iterator[str]:
    """librdkafka's mock cluster (the embedded broker of `demo`), held by a producer."""
    holder = Producer({"test.mock.num.brokers": 1, "client.id": "probe-test-cluster"})
    brokers = holder.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    holder.flush(1)


def test_the_probe_answers_beside_a_consumer_polling_an_idle_topic(bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "probe-test",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(["idle"])
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            consumer.consume(500, 0.05)

    polling = threading.Thread(target=poll, daemon=True)
    polling.start()
    try:
        time.sleep(1.0)  # the consumer is in its loop
        probe = KafkaProbe(kafka, "idle", client_id="probe-test")
        contact = Contact(probe)
        started = time.monotonic()
        check = contact()
        assert check.ok, check
        assert time.monotonic() - started < 2.5
    finally:
        stop.set()
        polling.join(5)
        consumer.close()


def test_a_closed_probe_asks_nothing() -> None:
    probe = KafkaProbe(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "t", client_id="x")
    probe.close()
    try:
        probe()
    except ProbeFailed as exc:
        assert "stopping" in str(exc)
    else:
        raise AssertionError("a closed probe asked")
