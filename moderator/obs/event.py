"""One event's telemetry: its spans and the metrics measured with them (stages, cache, verdict).

The stage spans and `moderator_stage_latency_seconds` time the same intervals, once. Spans are
started from the event's `Trace` (moderator.obs.tracing explains the one source of truth).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    Span,
    SpanContext,
    Tracer,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from moderator.emit.records import Trace
from moderator.engine.window import WindowResult
from moderator.errors import ErrorCode, ProcessingError
from moderator.events.upload import UploadEvent
from moderator.events.verdict import InputCoords, Verdict, category_code
from moderator.obs.metrics import Metrics
from moderator.obs.tracing import (
    failed,
    naming,
    never_samples,
    start_event_span,
    unrecorded_event_span,
)

LATENCY = "moderator_stage_latency_seconds"
UNKNOWN_TENANT_LABEL = "_unknown"
"""`moderator_verdicts_total`'s tenant for unknown_tenant verdicts: their tenant ids, which no
policy names, would each add series."""


def start_counters(metrics: Metrics) -> None:
    """The counters an event's telemetry adds to, at 0 from the start: a first burst then
    shows in rate()."""
    for result in ("hit", "miss"):
        metrics.add("moderator_cache_requests_total", 0, result=result)
    metrics.add("moderator_coalesced_total", 0)


class EventTelemetry:
    """The spans of one event, `moderator.process` and a child per stage, and its metrics.

    Started when the loop took the event (`received`, monotonic seconds). `trace` is the
    event's Trace naming the event span: what the outputs carry. With a no-op tracer the spans
    cost next to nothing and `trace` is the one given. When the event span is not recorded
    (telemetry.traces `none`, or the upload's trace was not sampled), its children would not be
    either: none is started, the metrics are recorded all the same.
    """

    def __init__(
        self,
        tracer: Tracer,
        metrics: Metrics,
        trace: Trace,
        event: UploadEvent,
        coords: InputCoords,
        received: float,
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._received = received
        self.span = (
            unrecorded_event_span(trace)
            if never_samples(tracer)
            else start_event_span(tracer, trace, _attributes(event, coords), _start_ns(received))
        )
        self.trace = naming(trace, self.span)
        self._recording = self.span.is_recording()
        self._context = set_span_in_context(self.span) if self._recording else None

    @property
    def context(self) -> SpanContext:
        """The event span's context (what a batch span links to)."""
        return self.span.get_span_context()

    @contextmanager
    def stage(self, stage: str) -> Iterator[Span]:
        """A child span `moderator.<stage>` around the block and its latency, failed or not; an
        exception marks the span failed with its error code."""
        start = time.monotonic()
        span = (
            self._tracer.start_span(f"moderator.{stage}", self._context)
            if self._recording
            else INVALID_SPAN
        )
        try:
            yield span
        except Exception as exc:
            failed(span, exc.code.value if isinstance(exc, ProcessingError) else type(exc).__name__)
            raise
        finally:
            span.end()
            self._metrics.record(LATENCY, time.monotonic() - start, stage=stage)

    def cache(self, hit: bool) -> None:
        """A verdict cache lookup's result."""
        self.span.set_attribute("moderator.cache.hit", hit)
        self._metrics.add("moderator_cache_requests_total", result="hit" if hit else "miss")

    def coalesced(self, joined_ns: int, leader: SpanContext | None) -> None:
        """The event was answered by an engine call made for another event with the same
        judgement key (moderator.pipeline.coalesce): marks the event span, counts it, and records
        the wait, from joining to the answer, as `moderator.coalesce`, linked to the event span
        of the event that called the engine."""
        self.span.set_attribute("moderator.coalesced", True)
        self._metrics.add("moderator_coalesced_total")
        if not self._recording:
            return
        links = [Link(leader)] if leader is not None and leader.is_valid else None
        span = self._tracer.start_span(
            "moderator.coalesce", self._context, start_time=joined_ns, links=links
        )
        span.end(end_time=max(joined_ns, time.time_ns()))

    def served(self, waiters: int) -> None:
        """How many other events this event's engine call answered (set when any)."""
        if waiters:
            self.span.set_attribute("moderator.coalesce.waiters", waiters)

    def engine_calls(self, results: Sequence[WindowResult], submitted_ns: int) -> None:
        """Each frame's wait in the engine window and its engine call, measured on the window's
        threads: the call is placed right after the wait (a retried item's calls are not
        contiguous; the last call's duration is what it took). Latency: the slowest frame."""
        for index, wr in enumerate(results):
            started_ns = submitted_ns + int(wr.queue_ms * 1e6)
            ended_ns = started_ns + int(wr.infer_ms * 1e6)
            self._record("queue", submitted_ns, started_ns, {"moderator.frame": index})
            attempts = {"moderator.frame": index, "moderator.engine.attempts": wr.attempts}
            self._record("infer", started_ns, ended_ns, attempts)
        self._metrics.record(LATENCY, max(r.queue_ms for r in results) / 1000, stage="queue")
        self._metrics.record(LATENCY, max(r.infer_ms for r in results) / 1000, stage="infer")

    def dropped(self) -> None:
        """The event was dropped unfinished (no longer wanted): its span ends saying so, and
        no verdict is counted."""
        if self._recording:
            self.span.set_attribute("moderator.dropped", True)
        self.span.end()

    def end(self, verdict: Verdict, source: str) -> None:
        """Close the event span with its verdict; count the verdict; the total latency since
        the event was taken."""
        found = verdict.assessment
        category = category_code(found.category) if found is not None else "none"
        self.span.set_attribute("moderator.decision", verdict.decision)
        self.span.set_attribute("moderator.source", source)
        if verdict.error is not None:
            failed(self.span, verdict.error.code.value)
        self.span.end()
        unknown = verdict.error is not None and verdict.error.code is ErrorCode.UNKNOWN_TENANT
        self._metrics.add(
            "moderator_verdicts_total",
            tenant=UNKNOWN_TENANT_LABEL if unknown else verdict.tenant_id,
            decision=verdict.decision,
            category=category,
        )
        self._metrics.record(LATENCY, time.monotonic() - self._received, stage="total")

    def _record(
        self, stage: str, start_ns: int, end_ns: int, attributes: Mapping[str, AttributeValue]
    ) -> None:
        if not self._recording:
            return
        span = self._tracer.start_span(
            f"moderator.{stage}", self._context, attributes=attributes, start_time=start_ns
        )
        span.end(end_time=max(start_ns, end_ns))


def _attributes(event: UploadEvent, coords: InputCoords) -> dict[str, AttributeValue]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": coords.topic,
        "messaging.destination.partition.id": str(coords.partition),
        "messaging.kafka.offset": coords.offset,
        "messaging.message.id": event.event_id,
        "moderator.tenant": event.tenant_id,
    }


def _start_ns(received: float) -> int:
    """The wall-clock time of `received` (monotonic seconds), in ns since the epoch."""
    return time.time_ns() - max(0, int((time.monotonic() - received) * 1e9))
