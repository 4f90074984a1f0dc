"""What the consume loop reports: events by outcome, dead letters, checkpoints, flow gauges,
consumer lag, upload-to-verdict latency, and the broker's answers for readiness.

Everything here runs in the loop's thread. Gauges and lag are refreshed at most every
`gauges_every_s` / `lag_every_s`, never per message; the loop's per-event cost is a counter
increment and, for the end-to-end latency, one tuple held per message until its commit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from moderator.emit.records import OutRecord
from moderator.errors import ErrorCode
from moderator.obs.health import Check, Contact
from moderator.obs.metrics import Metrics, no_metrics

if TYPE_CHECKING:
    from moderator.pipeline.job import Job

log = structlog.get_logger("moderator.ingest")

TP = tuple[str, int]
ABORTS_NOT_READY = 5
"""Checkpoints aborted in a row, with none committed between, after which the `checkpoints`
readiness check fails: the same outputs are being produced and aborted again."""
# A verdict's JSON holds `"error":null` exactly when it is not an error verdict: the key occurs
# once, at the top level, and inside JSON strings every quote is escaped.
_NO_ERROR = b'"error":null'


class IntakeObserver:
    """The loop's metrics (see docs/observability.md) and its reports to the broker check."""

    def __init__(
        self,
        verdicts_topic: str,
        metrics: Metrics | None = None,
        broker: Contact | None = None,
        *,
        gauges_every_s: float = 1.0,
        lag_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._m = metrics if metrics is not None else no_metrics()
        self._verdicts = verdicts_topic
        self._broker = broker
        self._every = (gauges_every_s, lag_every_s)
        self._clock = clock
        self._wall = wall
        self._next_gauges = 0.0
        self._next_lag = 0.0
        # Per partition, in offset order: (offset, upload times) of messages not yet committed.
        self._started: dict[TP, deque[tuple[int, tuple[float | None, ...]]]] = {}
        self._aborts = 0  # checkpoints aborted since the last one committed
        self._abort_reason = ""
        # Each counter's series from the start, at 0: a first burst then shows in rate().
        for outcome in ("verdict", "error_verdict", "dlq", "skipped"):
            self._m.add("moderator_events_total", 0, outcome=outcome)
        self._m.add("moderator_dlq_total", 0, code=ErrorCode.MALFORMED_EVENT.value)
        for result in ("commit", "abort"):
            self._m.add("moderator_transactions_total", 0, result=result)

    # -- intake --------------------------------------------------------------------------------

    def consumed(self, messages: Sequence[Any]) -> None:
        """A fetch returned messages: the broker answers."""
        if messages and self._broker is not None:
            self._broker.answered()

    def accepted(self, tp: TP, offset: int, jobs: Sequence[Job], skipped: int) -> None:
        """A message was parsed into `jobs` (now started) and `skipped` records to ignore.

        Each job's upload time, its event's `uploaded_at` else the message's timestamp, is
        held until the offset is committed. An offset at or below the last one held means the
        partition was rewound: what was held for it is dropped, the messages come again.
        """
        if skipped:
            self._m.add("moderator_events_total", skipped, outcome="skipped")
        starts = tuple(_upload_time(job) for job in jobs)
        held = self._started.setdefault(tp, deque())
        if held and held[-1][0] >= offset:
            held.clear()
        if starts:
            held.append((offset, starts))

    def completed(self, records: Iterable[OutRecord]) -> None:
        """One event's outputs are ready: a verdict or an error verdict."""
        for rec in records:
            if rec.topic == self._verdicts and rec.value is not None:
                outcome = "verdict" if _NO_ERROR in rec.value else "error_verdict"
                self._m.add("moderator_events_total", outcome=outcome)
                return

    def dead_lettered(self, code: str) -> None:
        self._m.add("moderator_events_total", outcome="dlq")
        self._m.add("moderator_dlq_total", code=code)

    # -- checkpoints ---------------------------------------------------------------------------

    def committed(self, next_offsets: Mapping[TP, int], seconds: float) -> None:
        """A checkpoint committed these partitions up to (not including) the offsets; it took
        `seconds` (the `publish` stage)."""
        self._m.add("moderator_transactions_total", result="commit")
        self._m.record("moderator_stage_latency_seconds", seconds, stage="publish")
        if self._aborts >= ABORTS_NOT_READY:
            log.info("checkpoints_committing_again", aborted_in_a_row=self._aborts)
        self._aborts = 0
        if self._broker is not None:
            self._broker.answered()
        now = self._wall()
        for tp, next_offset in next_offsets.items():
            held = self._started.get(tp)
            while held and held[0][0] < next_offset:
                for start in held.popleft()[1]:
                    if start is not None:
                        latency = max(0.0, now - start)
                        self._m.record("moderator_upload_to_verdict_seconds", latency)

    def aborted(self, seconds: float, reason: str = "") -> None:
        """A checkpoint aborted after `seconds` (its outputs are produced again later)."""
        self._m.add("moderator_transactions_total", result="abort")
        self._m.record("moderator_stage_latency_seconds", seconds, stage="publish")
        self._aborts += 1
        self._abort_reason = reason
        if self._aborts == ABORTS_NOT_READY:
            log.error("checkpoints_failing", aborted_in_a_row=self._aborts, reason=reason)

    def checkpoints(self) -> Check:
        """The `checkpoints` readiness check: not ready once ABORTS_NOT_READY checkpoints in a
        row have aborted (nothing is committed; the consumer redoes the same work)."""
        if self._aborts < ABORTS_NOT_READY:
            return Check(True, "committing")
        return Check(False, f"the last {self._aborts} checkpoints aborted: {self._abort_reason}")

    def released(self, tps: Iterable[TP]) -> None:
        """No longer assigned here: its lag is another member's to report."""
        for topic, partition in tps:
            self._started.pop((topic, partition), None)
            self._m.set("moderator_consumer_lag", 0, topic=topic, partition=str(partition))

    # -- gauges --------------------------------------------------------------------------------

    def tick(
        self, in_flight: int, paused: bool, buffered: int, lag: Callable[[], Mapping[TP, int]]
    ) -> None:
        """Refresh the gauges when due (called every loop step); `lag` only when due."""
        now = self._clock()
        if now >= self._next_gauges:
            self._next_gauges = now + self._every[0]
            self._m.set("moderator_inflight", in_flight)
            self._m.set("moderator_paused", 1 if paused else 0)
            self._m.set("moderator_buffered_bytes", buffered)
        if now >= self._next_lag:
            self._next_lag = now + self._every[1]
            for (topic, partition), behind in lag().items():
                self._m.set("moderator_consumer_lag", behind, topic=topic, partition=str(partition))


def _upload_time(job: Job) -> float | None:
    if job.event.uploaded_at is not None:
        return job.event.uploaded_at.timestamp()
    ms = job.coords.timestamp_ms
    return ms / 1000 if ms is not None else None
