"""Probes for `health.Contact`: ask a dependency directly whether it answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from moderator.errors import ModeratorError

KAFKA_PROBE_TIMEOUT_S = 2.0


class ProbeFailed(ModeratorError):
    """The dependency did not answer; the message says why, in one line."""


def kafka_metadata(
    client: Any, topic: str, timeout_s: float = KAFKA_PROBE_TIMEOUT_S
) -> Callable[[], None]:
    """A probe asking the cluster for `topic`'s metadata through an existing client (a
    consumer's `list_topics`; one small request). A missing topic still means the cluster
    answered."""

    def probe() -> None:
        try:
            client.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            text = error.str() if isinstance(error, KafkaError) else str(exc)
            raise ProbeFailed(f"kafka: no metadata within {timeout_s:g} s: {text}") from exc
        except RuntimeError as exc:  # the client was closed meanwhile
            raise ProbeFailed(f"kafka: {exc}") from exc

    return probe
