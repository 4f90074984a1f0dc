"""The consume loop: one thread owns the consumer and the producer (docs/architecture.md)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaException, TopicPartition
from opentelemetry.trace import Tracer

from moderator.emit.records import OutRecord, dlq_output, trace_from_headers
from moderator.errors import ErrorCode
from moderator.events.parse import MalformedMessage, one_line, parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.verdict import InputCoords
from moderator.ingest.checkpoint import (
    CheckpointAborted,
    FatalKafkaError,
    checkpoint_timeout_s,
    client_failure,
    commit_checkpoint,
    replace_producer,
    start_transactions,
)
from moderator.ingest.flow import FlowGate
from moderator.ingest.jobs import Completion, JobDone, JobProcessor, LoopStats, MessageWork
from moderator.ingest.lag import assigned_lag
from moderator.ingest.poll import carries_record
from moderator.ingest.ports import Consumer, Producer
from moderator.ingest.stuck import ProducerStuck
from moderator.ingest.tracker import TP, OffsetTracker
from moderator.obs.health import Contact
from moderator.obs.intake import IntakeObserver
from moderator.obs.metrics import Metrics
from moderator.pipeline.job import Job
from moderator.settings import Settings

log = structlog.get_logger("moderator.ingest")
DRAIN_REPORT_S = 5.0  # a `draining` line this often while a drain waits for events


class IngestLoop:
    """Consume → process (concurrently, out of order) → checkpoint, until `stop` is set."""

    def __init__(
        self,
        *,
        settings: Settings,
        consumer: Consumer,
        producer: Producer,
        processor: JobProcessor,
        on_checkpoint: Callable[[int], None] | None = None,
        metrics: Metrics | None = None,
        broker: Contact | None = None,
        tracer: Tracer | None = None,
        renew_producer: Callable[[], Producer] | None = None,
    ) -> None:
        self._s = settings
        self._renew = renew_producer  # a new producer for one whose call is stuck (stuck.py)
        self._tracer = tracer
        self._obs = IntakeObserver(settings.kafka.topics.verdicts, metrics, broker)
        self._consumer = consumer
        self.producer = producer
        self._processor = processor
        tenancy = settings.tenancy
        events = frozenset(tenancy.content_events)
        self._rule = TenantRule(tenancy.rule, dict(tenancy.bucket_map), events)
        self.checkpoints = self._obs.checkpoints  # the `checkpoints` readiness check
        self._eos = settings.kafka.delivery == "exactly_once"
        self.turn_started: float | None = None
        self._tracker: OffsetTracker[OutRecord] = OffsetTracker()
        self._work: dict[tuple[TP, int], MessageWork] = {}
        self._generation: dict[TP, int] = {}
        self._done: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._jobs = 0
        self._assigned: set[TP] = set()
        flow = settings.flow
        self._gate = FlowGate(
            flow.high_in_flight,
            flow.low_in_flight,
            flow.high_buffered_bytes,
            flow.low_buffered_bytes,
        )
        self._repause: list[TP] = []
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._on_checkpoint = on_checkpoint
        self._dead = False
        self.stats = LoopStats()

    # -- main loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set, then drain for the grace period and checkpoint.

        Raises FatalKafkaError when the producer is fenced or otherwise unusable.
        """
        if self._eos:
            start_transactions(self.producer, self._timeout, self._s.kafka.transaction_timeout_ms)
        self._consumer.subscribe(
            [self._s.kafka.topics.uploads],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("consuming", topic=self._s.kafka.topics.uploads, exactly_once=self._eos)
        try:
            while not stop.is_set():
                self._step(self._s.flow.poll_batch)
            self._drain()
        except FatalKafkaError:
            self._dead = True  # later revoke callbacks (from close) must not touch the producer
            raise
        except KafkaException as exc:  # a client call no step handles (a seek, a pause)
            self._dead = True
            raise client_failure(exc) from exc

    def _step(self, batch: int) -> None:
        self.turn_started = time.monotonic()  # read by /healthz (moderator/obs/liveness.py)
        room = max(1, self._s.flow.high_in_flight - self.in_flight)
        messages = self._consumer.consume(min(batch, room), 0.05)
        self._obs.consumed(messages)
        if self._repause:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._repause])
            self._repause = []
        for msg in messages:
            self._accept(msg)
        self._collect()
        if self._checkpoint_due():
            self._checkpoint()
        self._apply_flow()
        self._obs.tick(self.in_flight, self.paused, self._processor.buffered_bytes, self._lag)

    def _drain(self) -> None:
        grace = self._s.flow.drain_grace_s
        log.info("draining", in_flight=self.in_flight, unfinished=self._jobs, grace_s=grace)
        self._pause_all()
        deadline, report = time.monotonic() + grace, time.monotonic() + DRAIN_REPORT_S
        while self._jobs > 0 and time.monotonic() < deadline:
            self._consumer.consume(1, 0.05)  # keeps group membership; paused, so returns nothing
            self._collect()
            if (now := time.monotonic()) >= report:  # progress while events in flight finish
                report += DRAIN_REPORT_S
                log.info("draining", unfinished=self._jobs, left_s=round(deadline - now))
        self._checkpoint()
        log.info("drained", left_unfinished=self._jobs, **vars(self.stats))

    @property
    def _timeout(self) -> float:
        return checkpoint_timeout_s(self._s.kafka.transaction_timeout_ms)

    @property
    def paused(self) -> bool:
        """Whether intake is paused by backpressure."""
        return self._gate.paused

    @property
    def in_flight(self) -> int:
        """Events being processed, or messages held uncommitted: what the water marks bound."""
        return max(self._jobs, self._tracker.in_flight)

    def _lag(self) -> dict[TP, int]:
        return assigned_lag(self._consumer, self._assigned, self._tracker.rewind_points())

    # -- intake --------------------------------------------------------------------------------

    def _accept(self, msg: Any) -> None:
        """Start the message's events, or dead-letter it: every message completes its offset."""
        if not carries_record(msg, log):
            return
        tp: TP = (msg.topic(), msg.partition())
        offset: int = msg.offset()
        self.stats.messages += 1
        self._tracker.track(tp, offset)
        try:
            jobs, skipped = self._jobs_for(msg, tp, offset)
        except MalformedMessage as exc:
            self._dead_letter(msg, tp, offset, str(exc))
            return
        except Exception as exc:
            # Safety net for a bug in parsing or job creation: it costs this one message (in the
            # DLQ, the exception named in its headers, logged with the traceback), never the loop
            # and with it every later message of the partition.
            self.stats.accept_errors += 1
            log.exception("accept_failed", topic=tp[0], partition=tp[1], offset=offset)
            self._dead_letter(
                msg, tp, offset, one_line(f"internal error: {type(exc).__name__}: {exc}")
            )
            return
        self.stats.skipped_records += skipped
        self._obs.accepted(tp, offset, jobs, skipped)
        if not jobs:
            self._complete(tp, offset, [])
            return
        generation = self._generation.get(tp, 0)
        self._work[(tp, offset)] = MessageWork([None] * len(jobs), len(jobs))
        for index, job in enumerate(jobs):
            self._jobs += 1
            self.stats.events += 1
            self._processor.submit(job, self._completer(tp, generation, offset, index))

    def _jobs_for(self, msg: Any, tp: TP, offset: int) -> tuple[list[Job], int]:
        """All of the message's jobs, or none (MalformedMessage), and its skipped records."""
        parsed = parse_message(msg.value(), self._rule)
        if not parsed.events:
            return [], parsed.skipped_records
        ts_type, ts = msg.timestamp()
        coords = InputCoords(
            topic=tp[0], partition=tp[1], offset=offset, timestamp_ms=ts if ts_type else None
        )
        headers, now = msg.headers(), time.monotonic()
        generation = self._generation.get(tp, 0)

        def wanted() -> bool:  # read from processor threads: one dict read
            return self._generation.get(tp, 0) == generation

        jobs = [
            Job(event, coords, trace_from_headers(headers, event.event_id), now, wanted)
            for event in parsed.events
        ]
        return jobs, parsed.skipped_records

    def _dead_letter(self, msg: Any, tp: TP, offset: int, reason: str) -> None:
        self.stats.dlq += 1
        self._obs.dead_lettered(ErrorCode.MALFORMED_EVENT.value)
        log.warning("dead_lettered", topic=tp[0], partition=tp[1], offset=offset, reason=reason)
        dlq = dlq_output(
            dlq_topic=self._s.kafka.topics.dlq,
            key=msg.key(),
            value=msg.value(),
            code=ErrorCode.MALFORMED_EVENT.value,
            message=reason,
            source_topic=tp[0],
            partition=tp[1],
            offset=offset,
            headers=msg.headers(),
        )
        self._complete(tp, offset, [dlq])

    def _completer(self, tp: TP, generation: int, offset: int, index: int) -> JobDone:
        def done(records: list[OutRecord] | None) -> None:
            self._done.put(Completion(tp, generation, offset, index, records))

        return done

    def _collect(self) -> None:
        """Move finished work into the offset tracker (in the loop's thread)."""
        while True:
            try:
                c = self._done.get_nowait()
            except queue.Empty:
                return
            self._jobs -= 1
            if c.generation != self._generation.get(c.tp, 0):
                continue  # work of a rewound, revoked or lost partition: dropped
            if c.records is None:
                continue  # abandoned: the message never completes, its offset is not committed
            work = self._work[(c.tp, c.offset)]
            work.outputs[c.index] = c.records
            self._obs.completed(c.records)
            work.left -= 1
            if work.left == 0:
                del self._work[(c.tp, c.offset)]
                outputs = [rec for recs in work.outputs if recs for rec in recs]
                self._complete(c.tp, c.offset, outputs)

    def _complete(self, tp: TP, offset: int, outputs: list[OutRecord]) -> None:
        self._tracker.complete(tp, offset, outputs)
        self._since_commit += 1

    # -- checkpoint ----------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        """Every commit_interval_ms, or once enough completions wait, or while intake is paused
        only because completions wait for their commit. Completed messages count as in flight
        until committed, so waiting for more would let backpressure stall intake until the
        interval runs out, with the pipeline idle meanwhile."""
        kafka, flow = self._s.kafka, self._s.flow
        elapsed_ms = (time.monotonic() - self._last_commit) * 1000
        enough = min(kafka.commit_max_events, max(1, flow.high_in_flight // 2))
        held_by_commit = (
            self._gate.paused
            and self._since_commit > 0
            and self._jobs <= flow.low_in_flight < self._tracker.in_flight
        )
        return (
            elapsed_ms >= kafka.commit_interval_ms or self._since_commit >= enough or held_by_commit
        )

    def _checkpoint(self, only: set[TP] | None = None, *, revoking: bool = False) -> None:
        self._last_commit = started = time.monotonic()
        ready = self._tracker.take_ready(only)
        if not ready:
            return
        # completions still held behind a pending lower offset keep counting towards the next one
        self._since_commit = max(0, self._since_commit - sum(r.count for r in ready.values()))
        try:
            produced = commit_checkpoint(
                self.producer,
                self._consumer,
                ready,
                exactly_once=self._eos,
                timeout_s=self._timeout,
                tracer=self._tracer,
            )
        except (CheckpointAborted, ProducerStuck) as exc:
            if isinstance(exc, ProducerStuck):
                self.producer = replace_producer(self._renew, exc, self._timeout)
                self.stats.producers_replaced += 1
            self.stats.aborted += 1
            self._obs.aborted(time.monotonic() - started, str(exc))
            log.warning("checkpoint_aborted", reason=str(exc), partitions=len(ready))
            if revoking:  # the partitions are leaving: the next owner starts from the commit
                for tp in ready:
                    self._reset(tp)
            else:
                self._rewind(set(ready))
            return
        count = sum(r.count for r in ready.values())
        for tp, r in ready.items():
            self._tracker.committed(tp, r.next_offset)
        self.stats.checkpoints += 1
        self._obs.committed(
            {tp: r.next_offset for tp, r in ready.items()}, time.monotonic() - started
        )
        self.stats.produced += produced
        self.stats.committed_messages += count
        log.debug("checkpoint", messages=count, records=produced)
        if self._on_checkpoint is not None:
            self._on_checkpoint(count)

    def _rewind(self, tps: set[TP]) -> None:
        """Seek back to the last committed offsets and drop the partitions' in-flight work."""
        points = self._tracker.rewind_points()
        for tp in tps:
            self._reset(tp)
            if tp in points and tp in self._assigned:
                self._consumer.seek(TopicPartition(tp[0], tp[1], points[tp]))

    def _reset(self, tp: TP) -> None:
        self._generation[tp] = self._generation.get(tp, 0) + 1
        self._tracker.partition(tp).clear()
        for key in [k for k in self._work if k[0] == tp]:
            del self._work[key]

    # -- rebalance (called inside consume(), in this thread) -----------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        for tp in tps:
            self._reset(tp)
            self._tracker.forget(tp)
            self._assigned.add(tp)
        if self._gate.paused and partitions:
            consumer.pause(partitions)
            self._repause.extend(tps)  # pausing inside the callback may precede the assignment
        log.info("assigned", partitions=sorted(tps))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        if not self._dead:
            self._collect()
            self._checkpoint(only=tps, revoking=True)
        self._release(tps)
        log.info("revoked", partitions=sorted(tps))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self._release(tps)
        log.warning("lost", partitions=sorted(tps))

    def _release(self, tps: set[TP]) -> None:
        self._obs.released(tps)
        for tp in tps:
            self._reset(tp)
            self._tracker.forget(tp)
            self._assigned.discard(tp)

    # -- backpressure --------------------------------------------------------------------------

    def _apply_flow(self) -> None:
        change = self._gate.update(self.in_flight, self._processor.buffered_bytes)
        if change == "pause":
            self.stats.pauses += 1
            self._pause_all()
            log.info("paused", in_flight=self.in_flight, buffered=self._processor.buffered_bytes)
        elif change == "resume":
            parts = [TopicPartition(t, p) for t, p in self._assigned]
            if parts:
                self._consumer.resume(parts)
            log.info("resumed", in_flight=self.in_flight)

    def _pause_all(self) -> None:
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if parts:
            self._consumer.pause(parts)
