"""The audit sink: `moderation.audit` → audit store. Offsets are committed only after the rows.

Delivery is at-least-once into an idempotent store: a record is stored once per event_id, so a
batch redelivered after a crash (stored, offsets not yet committed) inserts nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaException, TopicPartition
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from moderator.audit.errors import AuditUnavailable
from moderator.audit.models import AuditWriter, IncomingRecord, InsertResult
from moderator.audit.sink.inputs import TP, Batch, SinkStats, parse_value, sink_group_id
from moderator.audit.sink.observe import SinkObserver, log_conflicts
from moderator.ingest.poll import carries_record
from moderator.ingest.ports import Consumer
from moderator.settings import Settings

log = structlog.get_logger("moderator.audit.sink.loop")

POLL_TIMEOUT_S = 0.5
IDLE_POLLS = 2
"""Polls in a row that find nothing before a finishing sink counts itself caught up: one
may end while a fetch of the last records is still on its way."""
STATS_EVERY_S = 60.0


EXPIRY_CHECK_TIMEOUT_S = 10.0  # each broker query of the expired-records check


class _Abandoned(Exception):
    """Stop was requested while the database stayed unreachable for the grace period."""


class AuditSink:
    """Consume audit records in batches into the store; see `step` for the protocol."""

    def __init__(
        self,
        settings: Settings,
        store: AuditWriter,
        consumer: Consumer,
        *,
        anchor: Callable[[], None] | None = None,
        poll_timeout_s: float = POLL_TIMEOUT_S,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        grace_s: float | None = None,
        observer: SinkObserver | None = None,
    ) -> None:
        self._s = settings
        self._obs = observer if observer is not None else SinkObserver()
        self._store = store
        self._consumer = consumer
        self._anchor = anchor
        self._poll_timeout_s = poll_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._grace_s = settings.flow.drain_grace_s if grace_s is None else grace_s
        self._assigned: set[TP] = set()
        self._batch = Batch()
        self._carry: list[Any] = []  # messages a poll returned while an insert was retried
        self._retrying = False
        self._repause: list[TP] = []
        self._stop = threading.Event()
        self._stop_seen: float | None = None
        self._last_anchor = time.monotonic()
        self._anchor_pending = False  # rows inserted since the last anchor
        self._last_stats = time.monotonic()
        self.committed: dict[TP, int] = {}  # next offset per partition, as committed by us
        self.stats = SinkStats()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        topic = self._s.kafka.topics.audit
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("audit_sink_started", topic=topic, group=sink_group_id(self._s))

    def run(self, stop: threading.Event, finish: threading.Event | None = None) -> SinkStats:
        """Subscribe and run batches until `stop` is set, or, once `finish` is set, until the
        assigned partitions have nothing more (`IDLE_POLLS` polls in a row find nothing): the
        records written before `finish` are then in the store. The batch in progress finishes
        (or, when the database stays unreachable for the grace period after `stop`, is left
        uncommitted), then a last anchor is written and the consumer closed."""
        self._stop = stop
        self.start()
        idle, finishing = 0, False
        try:
            while not stop.is_set():
                if not finishing and finish is not None and finish.is_set():
                    finishing, idle = True, 0  # only polls after `finish` count
                idle = 0 if self.step() or not self._assigned else idle + 1
                if finishing and idle >= IDLE_POLLS:
                    log.info("audit_sink_caught_up", partitions=len(self._assigned))
                    break
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self._obs.closing()
        try:
            if self._anchor_pending:
                self._write_anchor()
        finally:
            self._consumer.close()
            log.info("audit_sink_stopped", **vars(self.stats))

    # -- the protocol --------------------------------------------------------------------------

    def step(self) -> int:
        """One batch, in this order:

        1. consume up to audit.batch_size messages (short timeout);
        2. parse each value; a malformed one is counted, logged with its coordinates and
           skipped (its offset still advances, so it never blocks the partition);
        3. insert the records in one database transaction (idempotent by event_id); while the
           database is unreachable, pause the partitions and retry with exponential backoff,
           polling so that the member stays in the group;
        4. only then commit the batch's offsets, synchronously;
        5. anchor and log stats when due.

        Returns the number of messages consumed.
        """
        want = max(1, self._s.audit.batch_size - len(self._carry))
        messages = self._carry + self._consumer.consume(want, self._poll_timeout_s)
        self._obs.consumed(messages)
        self._carry = []
        self._apply_repause()
        batch = self._batch = Batch()
        for msg in messages:
            self._accept(batch, msg)
        try:
            if batch.items:
                self._count(self._insert(batch))
            self._commit(batch)
        except _Abandoned:
            self.stats.abandoned += 1
            log.warning("audit_batch_abandoned", records=len(batch.items), reason="stopping")
        self.stats.batches += bool(batch.next_offsets)
        self._periodic()
        return len(messages)

    def _accept(self, batch: Batch, msg: Any) -> None:
        if not carries_record(msg, log):
            return
        tp: TP = (msg.topic(), msg.partition())
        offset: int = msg.offset()
        self.stats.messages += 1
        batch.next_offsets[tp] = offset + 1
        try:
            record = parse_value(msg.value())
        except ValueError as exc:  # json, UnicodeDecodeError and schema problems alike
            self._skip(tp, offset, str(exc))
            return
        batch.items.append(IncomingRecord(tp[0], tp[1], offset, record))

    def _skip(self, tp: TP, offset: int, reason: str) -> None:
        self.stats.skipped += 1
        log.warning(
            "audit_record_skipped", topic=tp[0], partition=tp[1], offset=offset, reason=reason[:300]
        )

    def _count(self, result: InsertResult) -> None:
        for r in result.rejected:
            self._skip((r.topic, r.partition), r.offset, r.reason)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.conflicts += result.conflicts
        if result.conflicts:
            log_conflicts(result)
        self._anchor_pending |= result.inserted > 0

    def _insert(self, batch: Batch) -> InsertResult:
        initial, most = self._backoff
        started = time.monotonic()
        retrying = Retrying(
            retry=retry_if_exception_type(AuditUnavailable),
            wait=wait_exponential(multiplier=initial, min=initial, max=most),
            stop=self._give_up,
            sleep=self._wait_paused,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    result = self._store.insert(list(batch.items))
                    self._obs.stored(result, time.monotonic() - started)
                    return result
        except AuditUnavailable as exc:
            raise _Abandoned() from exc
        finally:
            if self._retrying:
                self._retrying = False
                self._set_paused(False)
        raise AssertionError("unreachable")  # Retrying either returns or raises

    def _commit(self, batch: Batch) -> None:
        offsets = [
            TopicPartition(t, p, o)
            for (t, p), o in batch.next_offsets.items()
            if (t, p) in self._assigned
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are stored: a failed commit only means the next owner re-reads them.
            self.stats.commit_failures += 1
            log.warning("offset_commit_failed", error=str(exc.args[0] if exc.args else exc))
            return
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self._obs.committed()

    # -- database outage -----------------------------------------------------------------------

    def _give_up(self, state: RetryCallState) -> bool:
        """Never while running; once stop is set, after the grace period."""
        return self._grace_over()

    def _grace_over(self) -> bool:
        if not self._stop.is_set():
            return False
        now = time.monotonic()
        if self._stop_seen is None:
            self._stop_seen = now
        return now - self._stop_seen >= self._grace_s

    def _log_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self._obs.retry(str(exc))
        log.warning(
            "audit_insert_retry",
            attempt=state.attempt_number,
            wait_s=round(wait, 2),
            records=len(self._batch.items),
            error=str(exc),
        )

    def _wait_paused(self, seconds: float) -> None:
        """Backoff sleep that keeps the group membership: partitions paused, poll kept up."""
        if not self._retrying:
            self._retrying = True
            self._set_paused(True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._carry += self._consumer.consume(self._s.audit.batch_size, min(left, 0.2))
            self._apply_repause()
            if self._grace_over():
                return

    def _set_paused(self, paused: bool) -> None:
        parts = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not parts:
            return
        if paused:
            self._consumer.pause(parts)
        else:
            self._consumer.resume(parts)

    def _apply_repause(self) -> None:
        if self._repause and self._retrying:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._repause])
        self._repause = []

    # -- rebalance (inside consume(), in this thread) ------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._assigned.update(tps)
        self._check_expired(consumer, partitions)
        if self._retrying:  # assigned while paused: they arrive unpaused (cooperative-sticky)
            consumer.pause(partitions)
            self._repause.extend(tps)
        log.info("audit_sink_assigned", partitions=sorted(tps))

    def _check_expired(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Report records the brokers deleted before this group read them: a committed offset
        below the partition's low watermark. Those audit records are lost to the store (the
        consumer resumes at the oldest record kept), and `audit verify` cannot see it: the
        chain holds only what was stored. A group that never committed has nothing to compare."""
        try:
            committed = consumer.committed(partitions, timeout=EXPIRY_CHECK_TIMEOUT_S)
        except Exception as exc:  # a check for the log; the assignment goes on
            log.warning("audit_sink_expiry_unchecked", error=str(exc))
            return
        for tp in committed:
            if tp.offset < 0:
                continue
            try:
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), EXPIRY_CHECK_TIMEOUT_S, False
                )
            except Exception as exc:
                log.warning("audit_sink_expiry_unchecked", partition=tp.partition, error=str(exc))
                continue
            if low > tp.offset:
                self._obs.expired(tp.topic, tp.partition, low - tp.offset)
                log.error(
                    "audit_records_expired",
                    topic=tp.topic,
                    partition=tp.partition,
                    committed=tp.offset,
                    low_watermark=low,
                    offsets=low - tp.offset,
                    hint="the topic's retention ended before the sink read them: those audit "
                    "records are not in the store; their verdicts are on the verdicts topic",
                )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Only reachable mid-batch while an insert is being retried: abandon those partitions'
        # records (uncommitted, so the next owner reads them again; the rows are idempotent).
        self._release({(p.topic, p.partition) for p in partitions}, "audit_sink_revoked")

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._release({(p.topic, p.partition) for p in partitions}, "audit_sink_lost")

    def _release(self, tps: set[TP], event: str) -> None:
        self._batch.drop(tps)
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in tps]
        self._assigned -= tps
        for tp in tps:
            self.committed.pop(tp, None)
        # Lost (the group moved on without this sink) is a warning, as for the consumer's.
        (log.warning if event == "audit_sink_lost" else log.info)(event, partitions=sorted(tps))

    # -- anchors and stats ---------------------------------------------------------------------

    def _periodic(self) -> None:
        self._obs.periodic()
        now = time.monotonic()
        every = self._s.audit.anchor_every_s
        if self._anchor is not None and self._anchor_pending and now - self._last_anchor >= every:
            self._write_anchor()
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            log.info("audit_sink_stats", **vars(self.stats))

    def _write_anchor(self) -> None:
        if self._anchor is None:
            return
        self._last_anchor = time.monotonic()
        try:
            self._anchor()
        except Exception as exc:  # an anchor destination down must not stop the rows
            self.stats.anchor_failures += 1
            log.warning("audit_anchor_failed", error=str(exc))
            return
        self.stats.anchors += 1
        self._anchor_pending = False
