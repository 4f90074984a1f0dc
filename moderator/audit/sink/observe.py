"""What the audit sink reports: rows stored, batch latency, outage retries, chain heads, and the
broker's and the database's answers for readiness. Runs in the sink's thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from moderator.audit.models import ChainHead, InsertResult
from moderator.obs.health import Contact
from moderator.obs.metrics import Metrics, no_metrics

log = structlog.get_logger("moderator.audit.sink.loop")

HEADS_EVERY_S = 5.0  # chain heads are read after inserts, at most this often


class SinkObserver:
    """The sink's metrics (docs/observability.md) and reports to its readiness checks.

    `chain_heads` reads the store's chain heads (one small query) for
    `moderator_audit_chain_head`; without it that gauge is not set.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        broker: Contact | None = None,
        database: Contact | None = None,
        chain_heads: Callable[[], Iterable[ChainHead]] | None = None,
        heads_every_s: float = HEADS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._m = metrics if metrics is not None else no_metrics()
        self._broker = broker
        self._database = database
        self._chain_heads = chain_heads
        self._heads_every_s = heads_every_s
        self._clock = clock
        self._heads_due = chain_heads is not None  # once at start: the heads already stored
        self._heads_read = -heads_every_s

    def consumed(self, messages: Sequence[Any]) -> None:
        if messages and self._broker is not None:
            self._broker.answered()

    def committed(self) -> None:
        if self._broker is not None:
            self._broker.answered()

    def stored(self, result: InsertResult, seconds: float) -> None:
        """One batch is in the store, after `seconds` (outage retries included)."""
        if result.inserted:
            self._m.add("moderator_audit_rows_total", result.inserted, result="stored")
            self._heads_due = self._chain_heads is not None
        if result.duplicates:
            self._m.add("moderator_audit_rows_total", result.duplicates, result="duplicate")
        self._m.record("moderator_audit_batch_latency_seconds", seconds)
        if self._database is not None:
            self._database.answered()

    def retry(self, reason: str) -> None:
        """An insert failed on a database outage and will be tried again."""
        self._m.add("moderator_audit_db_retries_total")
        if self._database is not None:
            self._database.failed(reason)

    def periodic(self) -> None:
        """Read the chain heads when rows were stored since, at most every heads_every_s."""
        now = self._clock()
        if self._chain_heads is None or not self._heads_due:
            return
        if now - self._heads_read < self._heads_every_s:
            return
        self._heads_read = now
        try:
            heads = list(self._chain_heads())
        except Exception as exc:  # the gauge waits for the next period; rows go on
            log.warning("audit_chain_heads_unread", error=str(exc))
            return
        self._heads_due = False
        for head in heads:
            labels = {"topic": head.topic, "partition": str(head.partition)}
            self._m.set("moderator_audit_chain_head", head.seq, **labels)

    def closing(self) -> None:
        """The sink's clients close next: the readiness checks stop asking them."""
        for contact in (self._broker, self._database):
            if contact is not None:
                contact.close()
