"""Traces: the tracer provider from settings, the event span's start, publish and batch spans.

One source of truth for an event's trace is its `Trace` (moderator.emit.records), read from the
upload's `traceparent` header or derived from the event id: the event span is started *from* it
(as a child of the producer's span, or as a root that takes the derived trace id), and the
outputs then name the event span as their parent. The verdict's `trace_id`, the outputs'
`traceparent` and the spans therefore always agree, with tracing on or off. An event's spans
are held by moderator.obs.event; span and attribute names are listed in docs/observability.md
("Traces").
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Literal

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from moderator import __version__
from moderator.emit.records import OutRecord, Trace, traceparent_of
from moderator.engine.window import BatchCall

TracesKind = Literal["none", "console", "otlp"]

TRACER_NAME = "moderator"
EVENT_SPAN = "moderator.process"
STAGES = ("fetch", "decode", "queue", "infer", "decide")  # child spans moderator.<stage>
PUBLISH_SPAN = "moderator.publish"
BATCH_SPAN = "moderator.engine.batch"
# A checkpoint links every event it carries; the SDK's default of 128 links would drop most of
# a full one (kafka.commit_max_events is 1000 by default).
MAX_LINKS = 4096

_SPAN_IDS = RandomIdGenerator()
_ROOT_TRACE_ID: ContextVar[int | None] = ContextVar("moderator_root_trace_id", default=None)


class EventTraceIds(RandomIdGenerator):
    """Random ids, except that an event span without a remote parent takes its event's trace id.

    The SDK draws a root span's trace id from the provider's id generator; this is the only way
    to start a root in a trace chosen beforehand (the one derived from the event id).
    """

    def generate_trace_id(self) -> int:
        wanted = _ROOT_TRACE_ID.get()
        return wanted if wanted is not None else super().generate_trace_id()


def build_tracer_provider(
    kind: TracesKind, endpoint: str | None = None, *, instance_id: str | None = None
) -> TracerProvider:
    """The provider `telemetry.traces` asks for; call `shutdown()` on it at exit (flushes).

    none: spans are not recorded (ids are still drawn: outputs name an unrecorded event span);
    console: every span as JSON on stderr (stdout is a command's data); otlp: batches to the
    collector at `endpoint` over OTLP/HTTP (`http://collector:4318`; `/v1/traces` is added
    unless present; unset: the OTEL_EXPORTER_OTLP_* environment or http://localhost:4318).
    """
    provider = new_tracer_provider(instance_id=instance_id, recording=kind != "none")
    if kind == "console":
        # It is typed to want an IO; write and flush are all it calls.
        console = ConsoleSpanExporter(out=_Stderr())  # type: ignore[arg-type]
        provider.add_span_processor(SimpleSpanProcessor(console))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def new_tracer_provider(
    *, instance_id: str | None = None, recording: bool = True
) -> TracerProvider:
    """A provider with no exporter yet: the service's resource, the upstream sampling decision
    honoured (ParentBased), and the event trace ids. Tests add an in-memory exporter to it."""
    attributes: dict[str, AttributeValue] = {
        "service.name": "moderator",
        "service.version": __version__,
    }
    if instance_id:
        attributes["service.instance.id"] = instance_id
    return TracerProvider(
        sampler=ParentBased(ALWAYS_ON) if recording else ALWAYS_OFF,
        resource=Resource.create(attributes),
        id_generator=EventTraceIds(),
        span_limits=SpanLimits(max_links=MAX_LINKS),
    )


def otlp_traces_url(endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL for a collector's base URL (None: the exporter's default)."""
    if endpoint is None:
        return None
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def never_samples(tracer: Tracer) -> bool:
    """Whether `tracer` is a provider's built with `recording=False` (telemetry.traces `none`):
    its sampler drops every span, whatever the parent."""
    return getattr(tracer, "sampler", None) is ALWAYS_OFF


def unrecorded_event_span(trace: Trace) -> Span:
    """The event span a tracer that `never_samples` starts, without the SDK's work for it (a
    sampling decision, attributes, a span object per event: about 30 µs): not recorded, its own
    span id in the event's trace, for the outputs to name."""
    span_id = _SPAN_IDS.generate_span_id()
    return NonRecordingSpan(SpanContext(int(trace.trace_id, 16), span_id, is_remote=False))


def start_event_span(
    tracer: Tracer, trace: Trace, attributes: dict[str, AttributeValue], start_ns: int
) -> Span:
    """`moderator.process` (CONSUMER) in the event's trace: a child of the producer's span from
    the upload's header, or else a root that takes the trace id derived from the event id."""
    if trace.parent_span is not None:
        remote = SpanContext(
            int(trace.trace_id, 16),
            int(trace.parent_span, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(trace.flags, 16)),
        )
        parent = set_span_in_context(NonRecordingSpan(remote))
        return tracer.start_span(
            EVENT_SPAN, parent, SpanKind.CONSUMER, attributes, start_time=start_ns
        )
    token = _ROOT_TRACE_ID.set(int(trace.trace_id, 16))
    try:
        return tracer.start_span(
            EVENT_SPAN, Context(), SpanKind.CONSUMER, attributes, start_time=start_ns
        )
    finally:
        _ROOT_TRACE_ID.reset(token)


def naming(trace: Trace, span: Span) -> Trace:
    """`trace` naming `span` as its outputs' parent, when the span is ours and in that trace.

    A no-op tracer hands back the remote parent itself (is_remote): the outputs then keep a
    fresh span id, as without tracing.
    """
    ctx = span.get_span_context()
    if ctx.is_valid and not ctx.is_remote and f"{ctx.trace_id:032x}" == trace.trace_id:
        return replace(trace, span_id=f"{ctx.span_id:016x}")
    return trace


def failed(span: Span, code: str) -> None:
    """Mark a span failed with an error code (never a message: those may quote inputs)."""
    span.set_attribute("error.type", code)
    span.set_status(Status(StatusCode.ERROR, code))


@contextmanager
def publish_span(
    tracer: Tracer, records: Sequence[OutRecord], *, exactly_once: bool, messages: int
) -> Iterator[Span]:
    """`moderator.publish` (PRODUCER) around one checkpoint, a root linking each context its
    records carry: the event spans of verdicts and audit records, the uploads' producers of
    dead-lettered messages."""
    links: list[Link] = []
    seen: set[tuple[str, str]] = set()
    # An unrecorded span drops its links: reading every record's headers would be wasted.
    for rec in records if records_spans(tracer) else ():
        found = traceparent_of(rec.headers)
        if found is None or found[:2] in seen:
            continue
        seen.add(found[:2])
        trace_id, span_id, flags = found
        context = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))
        links.append(Link(context))
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.batch.message_count": len(records),
        "moderator.checkpoint.messages": messages,
        "moderator.checkpoint.transactional": exactly_once,
    }
    topics = {rec.topic for rec in records}
    if len(topics) == 1:
        attributes["messaging.destination.name"] = topics.pop()
    span = tracer.start_span(
        PUBLISH_SPAN, Context(), kind=SpanKind.PRODUCER, attributes=attributes, links=links
    )
    try:
        yield span
    except Exception as exc:
        failed(span, type(exc).__name__)
        raise
    finally:
        span.end()


def records_spans(tracer: Tracer) -> bool:
    """Whether `tracer` may record a root span: not a no-op tracer, nor one that
    `never_samples`."""
    return not isinstance(tracer, NoOpTracer) and not never_samples(tracer)


def record_batch(tracer: Tracer, call: BatchCall) -> None:
    """`moderator.engine.batch`: one engine call of `len(call.tags)` items, a root span linking
    the event span of each item tagged with one (its SpanContext; other tags are skipped).

    The engine window's `on_batch` hook: the processor tags each request with its event span.
    A call whose events were all left unsampled upstream is not recorded either (a call with
    no event at all, the warm-up, is).
    """
    contexts = [t for t in call.tags if isinstance(t, SpanContext) and t.is_valid]
    if contexts and not any(c.trace_flags.sampled for c in contexts):
        return
    links = [Link(c) for c in contexts]
    span = tracer.start_span(
        BATCH_SPAN,
        Context(),
        kind=SpanKind.INTERNAL,
        attributes={"moderator.batch.size": len(call.tags)},
        links=links,
        start_time=call.start_ns,
    )
    if call.error is not None:
        failed(span, call.error)
    span.end(end_time=max(call.start_ns, call.end_ns))


class _Stderr:
    """Writes to whatever `sys.stderr` is at the time (see moderator.logs.StderrLogger)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
