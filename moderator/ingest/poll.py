"""What a polled message means to a consume loop: a record, or an error to log and pass over."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError
from structlog.typing import FilteringBoundLogger


def carries_record(msg: Any, log: FilteringBoundLogger) -> bool:
    """Whether a message from poll/consume holds a record. One holding an error does not: the
    end of a partition is no news, any other error is logged as `consumer_error` on the
    caller's `log` (librdkafka retries on its own; the loop goes on)."""
    err = msg.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer_error", error=str(err))
    return False
