"""What the audit sink reports: rows stored (or not: duplicates, and conflicts by kind, logged
too), batch latency, outage retries, chain heads, and the broker's and the database's answers
for readiness. Runs in the sink's thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from moderator.audit.db.conflicts import KINDS, Conflict, WriteResult, by_kind
from moderator.audit.models import ChainHead, InsertResult
from moderator.masking import mask_passwords
from moderator.obs.health import Check, Contact
from moderator.obs.metrics import Metrics, no_metrics

log = structlog.get_logger("moderator.audit.sink.loop")

HEADS_EVERY_S = 5.0  # chain heads are read after inserts, at most this often
CONFLICTS_LOGGED = 10  # tenant and object conflicts logged one by one per batch; then a count


def conflicts_of(result: InsertResult) -> tuple[Conflict, ...]:
    """The batch's conflicts, each with its kind (a writer other than the store may count
    them without saying what they were: then none)."""
    return result.conflicted if isinstance(result, WriteResult) else ()


def log_conflicts(result: InsertResult) -> None:
    """Records not stored because their event id's row holds a different record
    (`audit.db.conflicts`). A tenant or object conflict means a verdict without its audit record:
    an error line for each of the first CONFLICTS_LOGGED, naming the event, the tenant kept and
    the tenant dropped, and where the dropped record is on the audit topic; then one warning
    with the counts by kind (`record`: the event decided again) and how many were not listed."""
    conflicted = conflicts_of(result)
    serious = [c for c in conflicted if c.kind != "record"]
    for found in serious[:CONFLICTS_LOGGED]:
        log.error(
            "audit_event_id_conflict",
            kind=found.kind,
            event_id=found.event_id,
            stored_tenant=found.stored_tenant,
            tenant=found.tenant,
            topic=found.topic,
            partition=found.partition,
            offset=found.offset,
        )
    counts = by_kind(conflicted)
    log.warning(
        "audit_duplicate_conflicts",
        count=result.conflicts,
        tenant_conflicts=counts["tenant"],
        object_conflicts=counts["object"],
        record_conflicts=counts["record"],
        unlisted=max(0, len(serious) - CONFLICTS_LOGGED),
    )


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
        # Each counter's series from the start, at 0: a first burst then shows in rate().
        for result in ("stored", "duplicate", *(f"conflict_{k}" for k in KINDS)):
            self._m.add("moderator_audit_rows_total", 0, result=result)
        self._m.add("moderator_audit_db_retries_total", 0)
        self._chain_heads = chain_heads
        self._heads_every_s = heads_every_s
        self._clock = clock
        self._heads_due = chain_heads is not None  # once at start: the heads already stored
        self._heads_read = -heads_every_s
        # Since when writes have failed (None: the last one was stored), and why.
        self._failing_since: float | None = None
        self._failing_reason = ""
        self._m.set("moderator_audit_store_ready", 1)  # the store opened: it took writes

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
        conflicted = conflicts_of(result)
        if result.duplicates > len(conflicted):
            redelivered = result.duplicates - len(conflicted)
            self._m.add("moderator_audit_rows_total", redelivered, result="duplicate")
        for kind, count in by_kind(conflicted).items():
            if count:
                self._m.add("moderator_audit_rows_total", count, result=f"conflict_{kind}")
        self._m.record("moderator_audit_batch_latency_seconds", seconds)
        if self._failing_since is not None:
            failing_s = self._clock() - self._failing_since
            log.warning("audit_store_writes_again", failing_s=round(failing_s, 1))
            self._failing_since = None
            self._m.set("moderator_audit_store_ready", 1)
        if self._database is not None:
            self._database.answered()

    def expired(self, topic: str, partition: int, offsets: int) -> None:
        """The brokers deleted `offsets` offsets of a partition before the group read them."""
        self._m.add(
            "moderator_audit_expired_offsets_total", offsets, topic=topic, partition=str(partition)
        )

    def retry(self, reason: str) -> None:
        """An insert failed on a database outage and will be tried again."""
        self._m.add("moderator_audit_db_retries_total")
        self._m.set("moderator_audit_store_ready", 0)
        if self._failing_since is None:
            self._failing_since = self._clock()
        self._failing_reason = mask_passwords(" ".join(reason.split()))[:300]
        if self._database is not None:
            self._database.failed(reason)

    def store_check(self) -> Check:
        """The `audit_store` readiness check: not ready from a failed write until a batch is
        stored (the database may answer a read meanwhile: a full disk, a read-only file, a held
        lock take reads), else the database's own answers."""
        since = self._failing_since
        if since is not None:
            failing_s = self._clock() - since
            return Check(False, f"writes failing for {failing_s:.0f} s: {self._failing_reason}")
        if self._database is None:
            return Check(True, "no database check")
        return self._database()

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
