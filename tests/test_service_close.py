"""run_service's way out: the loop's own error is what it raises, whatever the close meets."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from moderator.errors import ConfigError
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.checkpoint import FatalKafkaError
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.memory.broker import MemoryBroker
from moderator.service import build_pipeline, run_service
from tests.harness import settings_for, write_policies


class BrokenProducer:
    """A test double of a producer librdkafka has put in a fatal state: `init_transactions`
    raises `error`, and so does every later `flush`, as the real client's does."""

    def __init__(self, real: Any, error: KafkaError) -> None:
        self._real = real
        self._error = error
        self.flushes = 0

    def init_transactions(self, timeout: float) -> None:
        raise KafkaException(self._error)

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        raise KafkaException(
            KafkaError(KafkaError._FATAL, "Fatal error: see the first", fatal=True)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize(
    ("code", "raised", "says"),
    [
        (KafkaError.INVALID_TRANSACTION_TIMEOUT, ConfigError, "kafka.transaction_timeout_ms: "),
        (KafkaError._FENCED, FatalKafkaError, "fatal Kafka error at start-up"),
    ],
)
def test_the_loops_error_is_raised_though_the_last_flush_fails(
    tmp_path: Path, code: int, raised: type[Exception], says: str
) -> None:
    broker = MemoryBroker()
    settings = settings_for(write_policies(tmp_path), **{"http.port": 0})
    producer = BrokenProducer(
        broker.producer(producer_config(settings)), KafkaError(code, "refused", fatal=True)
    )
    with pytest.raises(raised) as caught:
        run_service(
            settings,
            threading.Event(),
            pipeline=build_pipeline(settings, store=InMemoryObjectStore()),
            consumer=broker.consumer(consumer_config(settings)),  # type: ignore[arg-type]
            producer=producer,  # type: ignore[arg-type]
        )
    assert str(caught.value).startswith(says)
    assert producer.flushes == 1  # tried all the same: what it held may still go out


class FlushCounter:
    """A test double around the in-memory broker's producer that counts `flush` calls."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.flushes = 0

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        return int(self._real.flush(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_clean_stop_flushes_and_returns_the_loops_stats(tmp_path: Path) -> None:
    broker = MemoryBroker()
    settings = settings_for(write_policies(tmp_path), **{"http.port": 0})
    producer = FlushCounter(broker.producer(producer_config(settings)))
    stop = threading.Event()
    stop.set()  # drains at once: nothing consumed
    stats = run_service(
        settings,
        stop,
        pipeline=build_pipeline(settings, store=InMemoryObjectStore()),
        consumer=broker.consumer(consumer_config(settings)),  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    assert stats.checkpoints == 0 and stats.aborted == 0
    assert producer.flushes == 1
