"""The tracing parts one by one: providers from settings, the publish span of a checkpoint, the
batch span, log lines carrying the trace id, and outputs without tracing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from moderator.emit.records import OutRecord, dlq_output, trace_from_headers
from moderator.engine.window import BatchCall
from moderator.events.upload import UploadEvent
from moderator.events.verdict import InputCoords
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.checkpoint import CheckpointAborted, commit_checkpoint
from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.tracker import Ready
from moderator.logs import configure_logging
from moderator.obs.log_context import merge_event_context
from moderator.obs.tracing import (
    BATCH_SPAN,
    PUBLISH_SPAN,
    TRACER_NAME,
    build_tracer_provider,
    new_tracer_provider,
    otlp_traces_url,
    record_batch,
)
from moderator.pipeline.job import Job
from moderator.service import build_pipeline
from moderator.settings import LogSettings
from tests.harness import BUCKET, Instance, png, settings_for, wait_for, write_policies

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    provider = new_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider, spans
    provider.shutdown()


# -- providers ---------------------------------------------------------------------------------


def test_none_records_nothing_but_still_draws_span_ids() -> None:
    provider = build_tracer_provider("none")
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    span = provider.get_tracer(TRACER_NAME).start_span("x")
    span.end()
    assert not span.is_recording() and span.get_span_context().is_valid
    assert spans.get_finished_spans() == ()
    provider.shutdown()


def test_console_writes_spans_to_stderr_not_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    provider = build_tracer_provider("console", instance_id="pod-1")
    provider.get_tracer(TRACER_NAME).start_span("moderator.test").end()
    provider.shutdown()
    out, err = capsys.readouterr()
    assert out == ""
    doc = json.loads(err)
    assert doc["name"] == "moderator.test"
    assert doc["resource"]["attributes"]["service.name"] == "moderator"
    assert doc["resource"]["attributes"]["service.instance.id"] == "pod-1"


def test_otlp_builds_without_reaching_the_collector() -> None:
    provider = build_tracer_provider("otlp", "http://127.0.0.1:9")
    provider.shutdown()  # nothing recorded: nothing to send


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, None),
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://c.example/otlp/v1/traces", "https://c.example/otlp/v1/traces"),
    ],
)
def test_otlp_traces_url(endpoint: str | None, url: str | None) -> None:
    assert otlp_traces_url(endpoint) == url


# -- publish and batch spans -------------------------------------------------------------------


class _Producer:
    """Accepts everything; `flush` leaves `unsent` records unacknowledged."""

    def __init__(self, unsent: int = 0) -> None:
        self.produced: list[str] = []
        self.unsent = unsent

    def produce(self, topic: str, **_: Any) -> None:
        self.produced.append(topic)

    def flush(self, timeout: float = -1) -> int:
        return self.unsent


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[Any] = []

    def commit(self, **kwargs: Any) -> None:
        self.commits.append(kwargs)


def _record(topic: str, trace_id: str, span_id: str) -> OutRecord:
    return OutRecord(topic, b"k", b"{}", [("traceparent", f"00-{trace_id}-{span_id}-01".encode())])


def test_a_checkpoint_is_one_producer_span_linking_the_events_it_carries(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, spans = exporter
    a, b = "1" * 16, "2" * 16
    dlq = dlq_output(
        dlq_topic="dlq",
        key=None,
        value=b"x",
        code="malformed_event",
        message="bad",
        source_topic="uploads",
        partition=0,
        offset=3,
        headers=[("traceparent", f"00-{'3' * 32}-{'4' * 16}-01".encode())],
    )
    ready = {
        ("uploads", 0): Ready(
            4,
            [_record("v", TRACE, a), _record("a", TRACE, a), _record("v", TRACE, b), dlq],
            3,
        ),
        ("uploads", 1): Ready(8, [], 1),
    }
    producer, consumer = _Producer(), _Consumer()
    produced = commit_checkpoint(
        producer,  # type: ignore[arg-type]  # the calls at-least-once makes
        consumer,  # type: ignore[arg-type]
        ready,
        exactly_once=False,
        timeout_s=1,
        tracer=provider.get_tracer(TRACER_NAME),
    )
    assert produced == 4 and len(consumer.commits) == 1
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind, span.parent) == (PUBLISH_SPAN, SpanKind.PRODUCER, None)
    linked = {
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in span.links
    }
    assert linked == {(TRACE, a), (TRACE, b), ("3" * 32, "4" * 16)}
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.batch.message_count"] == 4
    assert attributes["moderator.checkpoint.messages"] == 4
    assert attributes["moderator.checkpoint.transactional"] is False
    assert "messaging.destination.name" not in attributes  # several topics


def test_an_aborted_checkpoint_marks_its_span_failed(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, spans = exporter
    ready = {("uploads", 0): Ready(1, [_record("v", TRACE, "1" * 16)], 1)}
    with pytest.raises(CheckpointAborted):
        commit_checkpoint(
            _Producer(unsent=1),  # type: ignore[arg-type]
            _Consumer(),  # type: ignore[arg-type]
            ready,
            exactly_once=False,
            timeout_s=1,
            tracer=provider.get_tracer(TRACER_NAME),
        )
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "CheckpointAborted"
    assert dict(span.attributes or {})["messaging.destination.name"] == "v"


def test_a_batch_span_links_its_items_and_keeps_its_times(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, spans = exporter
    items: list[object] = [SpanContext(int(TRACE, 16), i, True, TraceFlags(1)) for i in (5, 6)]
    start = time.time_ns()
    tracer = provider.get_tracer(TRACER_NAME)
    call = BatchCall((*items, None), start, start + 1000, "engine_error")  # one untagged
    record_batch(tracer, call)
    (span,) = spans.get_finished_spans()
    assert span.name == BATCH_SPAN and (span.start_time, span.end_time) == (start, start + 1000)
    assert [link.context.span_id for link in span.links] == [5, 6]
    assert dict(span.attributes or {})["moderator.batch.size"] == 3
    assert span.status.status_code is StatusCode.ERROR


# -- without tracing, and the logs --------------------------------------------------------------


def test_without_a_tracer_outputs_name_a_fresh_span_not_the_producers(tmp_path: Path) -> None:
    broker, store = MemoryBroker(), InMemoryObjectStore()
    store.put(BUCKET, "acme/a.png", png(1))
    event = {
        "event_id": "e",
        "tenant_id": "acme",
        "object": {"bucket": BUCKET, "key": "acme/a.png"},
    }
    header = [("traceparent", f"00-{TRACE}-{'1' * 16}-01".encode())]
    broker.produce_plain("uploads", json.dumps(event).encode(), key=b"acme", headers=header)
    instance = Instance(broker, store, settings_for(write_policies(tmp_path / "p"))).start()
    try:
        wait_for(lambda: len(broker.records("moderation.verdicts")) == 1, what="verdict")
    finally:
        instance.shutdown()
    (record,) = broker.records("moderation.verdicts")
    _, trace_id, parent, _ = dict(record.headers or [])["traceparent"].decode().split("-")
    assert trace_id == TRACE and parent not in ("1" * 16, "0" * 16)
    assert json.loads(record.value or b"{}")["trace_id"] == TRACE


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Let every level through for capture_logs (the test session logs at warning)."""
    configure_logging(LogSettings(level="debug", format="json"))
    yield
    configure_logging(LogSettings(level="warning", format="json"))


@pytest.mark.usefixtures("debug_logs")
def test_every_log_line_of_an_event_carries_its_trace_id(tmp_path: Path) -> None:
    store = InMemoryObjectStore()
    store.put(BUCKET, "acme/ok.png", png(3))
    pipeline = build_pipeline(settings_for(write_policies(tmp_path / "p")), store=store)
    trace = trace_from_headers([("traceparent", f"00-{TRACE}-{'1' * 16}-01".encode())], "e")
    # judged (its verdict logged on an engine window thread), a missing object (logged on a
    # fetch thread), an unknown tenant (no policy)
    objects = [("acme", "acme/ok.png"), ("acme", "acme/gone"), ("nobody", "nobody/x")]
    jobs = [
        Job(
            UploadEvent.model_validate(
                {"event_id": f"e{i}", "tenant_id": tenant, "object": {"bucket": BUCKET, "key": key}}
            ),
            InputCoords(topic="uploads", partition=0, offset=i),
            trace,
            time.monotonic(),
        )
        for i, (tenant, key) in enumerate(objects)
    ]
    done: list[list[OutRecord]] = []
    with structlog.testing.capture_logs(processors=[merge_event_context]) as logs:
        for job in jobs:
            pipeline.processor.submit(job, done.append)
        wait_for(lambda: len(done) == 3, what="verdicts")
    pipeline.close()
    events = [(entry["event"], entry.get("event_id")) for entry in logs]
    assert sorted(events) == [
        ("event_error", "e1"),
        ("event_error", "e2"),
        ("verdict", "e0"),
        ("verdict", "e1"),
        ("verdict", "e2"),
    ]
    assert all(entry["trace_id"] == TRACE for entry in logs), logs


@pytest.mark.usefixtures("debug_logs")
def test_an_engine_error_is_logged_as_an_event_error(tmp_path: Path) -> None:
    store = InMemoryObjectStore()
    store.put(BUCKET, "acme/ok.png", png(3))
    settings = settings_for(
        write_policies(tmp_path / "p"), **{"engine.fake.failure_rate": 1.0, "engine.retries": 0}
    )
    pipeline = build_pipeline(settings, store=store)
    event = UploadEvent.model_validate(
        {"event_id": "e0", "tenant_id": "acme", "object": {"bucket": BUCKET, "key": "acme/ok.png"}}
    )
    job = Job(
        event,
        InputCoords(topic="uploads", partition=0, offset=0),
        trace_from_headers(None, "e0"),
        time.monotonic(),
    )
    done: list[list[OutRecord]] = []
    with structlog.testing.capture_logs(processors=[merge_event_context]) as logs:
        pipeline.processor.submit(job, done.append)
        wait_for(lambda: len(done) == 1, what="the verdict")
    pipeline.close()
    verdict = json.loads(done[0][0].value or b"{}")
    assert (verdict["source"], verdict["error"]["code"]) == ("error", "engine_error")
    [line] = [entry for entry in logs if entry["event"] == "event_error"]
    assert (line["code"], line["event_id"]) == ("engine_error", "e0")
    assert line["reason"] == verdict["error"]["message"]
