"""Probes for `health.Contact`: ask a dependency directly whether it answers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka.admin
from confluent_kafka import KafkaError, KafkaException

from moderator.errors import ModeratorError
from moderator.settings import KafkaSettings

KAFKA_PROBE_TIMEOUT_S = 2.0


class ProbeFailed(ModeratorError):
    """The dependency did not answer; the message says why, in one line."""


class KafkaProbe:
    """Asks the cluster for `topic`'s metadata (one small request) through a client of its own.

    Not through the consumer the loop polls: librdkafka serves a consumer's metadata request
    behind its `consume` calls, so on an idle topic the request waited for as long as the loop
    kept polling (seconds, without end), and `/readyz` with it. The AdminClient is made on the
    first probe, with the service's connection settings, and logs nothing: the check reports
    the outcome. A missing topic still means the cluster answered.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        client_id: str,
        timeout_s: float = KAFKA_PROBE_TIMEOUT_S,
        factory: Callable[[dict[str, Any]], Any] = confluent_kafka.admin.AdminClient,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._factory = factory
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False

    def __call__(self) -> None:
        with self._lock:
            if self._closed:
                raise ProbeFailed("kafka: stopping")
            if self._client is None:
                self._client = self._build()
            client = self._client
        try:
            client.list_topics(self._topic, timeout=self._timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            text = error.str() if isinstance(error, KafkaError) else str(exc)
            raise ProbeFailed(f"kafka: no metadata within {self._timeout_s:g} s: {text}") from exc

    def close(self) -> None:
        """No probe after this; the client goes with the object (AdminClient has no close)."""
        with self._lock:
            self._closed = True
            self._client = None

    def _build(self) -> Any:
        from moderator.ingest.kafka import build_client
        from moderator.ingest.startup import probe_config

        conf = probe_config(self._kafka, self._client_id)
        return build_client(self._factory, conf, self._kafka)
