"""Traces through the real loop and processor on the in-memory broker, read with an in-memory
span exporter: the event span continues the upload's `traceparent`, its stages are its
children, the verdict and its header carry the same trace, and the stage metrics move."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from moderator.engine.base import Engine
from moderator.engine.factory import build_window
from moderator.engine.window import EngineWindow
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.telemetry import Telemetry
from moderator.obs.tracing import BATCH_SPAN, EVENT_SPAN, TRACER_NAME, new_tracer_provider
from moderator.pipeline.process import Processor
from moderator.settings import EngineSettings
from tests.harness import BUCKET, Instance, png, settings_for, wait_for, write_policies
from tests.test_obs_http import samples

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"


@dataclass
class Observed:
    spans: InMemorySpanExporter
    telemetry: Telemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The values of one scraped sample (`moderator_verdicts_total`, a histogram's
        `..._count`), by their sorted labels."""
        return {
            labels: v for (name, labels), v in samples(self.telemetry).items() if name == sample
        }


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Observed]:
    """Every Processor and engine window the service builds traces into an in-memory exporter
    and records its metrics on one Telemetry (whatever service.py itself passes)."""
    exporter = InMemorySpanExporter()
    provider = new_tracer_provider(instance_id="test-0")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry()
    metrics = telemetry.metrics

    def traced(**kwargs: Any) -> Processor:
        kwargs.update(tracer=provider.get_tracer(TRACER_NAME), metrics=metrics)
        return Processor(**kwargs)

    def windowed(engine: Engine, settings: EngineSettings, *args: Any) -> EngineWindow:
        return build_window(engine, settings, metrics, provider.get_tracer(TRACER_NAME))

    monkeypatch.setattr("moderator.service.Processor", traced)
    monkeypatch.setattr("moderator.service.build_window", windowed)
    yield Observed(exporter, telemetry)
    provider.shutdown()


def _upload(
    broker: MemoryBroker, store: InMemoryObjectStore, n: int, headers: list[Any] | None = None
) -> None:
    key = f"acme/img-{n}.png"
    store.put(BUCKET, key, png(n))
    event = {"event_id": f"ev-{n}", "tenant_id": "acme", "object": {"bucket": BUCKET, "key": key}}
    broker.produce_plain("uploads", json.dumps(event).encode(), key=b"acme", headers=headers)


def _run(tmp_path: Path, uploads: list[list[Any] | None]) -> dict[str, Any]:
    """Run one instance over uploads ev-0.. (each with its headers); the verdict records by
    event id."""
    broker, store = MemoryBroker(), InMemoryObjectStore()
    for n, headers in enumerate(uploads):
        _upload(broker, store, n, headers)
    settings = settings_for(write_policies(tmp_path / "policies"))
    instance = Instance(broker, store, settings).start()
    try:
        wait_for(
            lambda: len(broker.records("moderation.verdicts")) >= len(uploads), what="verdicts"
        )
    finally:
        instance.shutdown()
    assert instance.error is None
    records = broker.records("moderation.verdicts")
    return {json.loads(r.value or b"{}")["event_id"]: r for r in records}


def _header(record: Any, name: str) -> str:
    return dict(record.headers)[name].decode()


def _by_event(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {
        str((s.attributes or {})["messaging.message.id"]): s for s in spans if s.name == EVENT_SPAN
    }


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    ours = parent.get_span_context()
    return sorted(s.name for s in spans if s.parent is not None and s.parent == ours)


def test_the_event_span_continues_the_upload_trace_into_the_verdict(
    tmp_path: Path, observed: Observed
) -> None:
    traceparent = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
    verdicts = _run(tmp_path, [[("traceparent", traceparent.encode())]])
    spans = observed.finished()
    event = _by_event(spans)["ev-0"]
    ctx = event.get_span_context()
    assert event.kind is SpanKind.CONSUMER
    assert f"{ctx.trace_id:032x}" == UPSTREAM_TRACE
    assert event.parent is not None and event.parent.is_remote
    assert f"{event.parent.span_id:016x}" == UPSTREAM_SPAN
    assert _children(spans, event) == [
        "moderator.decide",
        "moderator.decode",
        "moderator.fetch",
        "moderator.infer",
        "moderator.queue",
    ]
    attributes = dict(event.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == "uploads"
    assert attributes["messaging.operation.type"] == "process"
    assert str(attributes["messaging.destination.partition.id"]).isdigit()
    assert isinstance(attributes["messaging.kafka.offset"], int)
    assert attributes["moderator.tenant"] == "acme"
    assert attributes["moderator.cache.hit"] is False
    assert attributes["moderator.source"] == "model"
    assert attributes["moderator.decision"] in ("allow", "review", "block")
    # The verdict names the event span as its parent, in the upload's trace.
    record = verdicts["ev-0"]
    version, trace_id, parent, flags = _header(record, "traceparent").split("-")
    assert (version, trace_id, parent, flags) == ("00", UPSTREAM_TRACE, f"{ctx.span_id:016x}", "01")
    assert json.loads(record.value or b"{}")["trace_id"] == UPSTREAM_TRACE
    # Stage spans lie inside the event span.
    for span in spans:
        if span.parent == ctx:
            assert event.start_time is not None and span.start_time is not None
            assert event.start_time <= span.start_time
            assert span.end_time is not None and event.end_time is not None
            assert span.end_time <= event.end_time


def test_each_engine_call_is_a_batch_span_linking_the_events_it_carried(
    tmp_path: Path, observed: Observed
) -> None:
    _run(tmp_path, [None] * 5)
    spans = observed.finished()
    events = {s.get_span_context().span_id: s for s in _by_event(spans).values()}
    batches = [s for s in spans if s.name == BATCH_SPAN]
    assert batches, "no moderator.engine.batch span"
    linked = [link.context.span_id for b in batches for link in b.links]
    # Every model-judged event rode in exactly one engine call (no retries on the fake engine);
    # the warm-up request carries no event span, so its call links nothing.
    assert sorted(linked) == sorted(events)
    for batch in batches:
        attributes = dict(batch.attributes or {})
        assert attributes["moderator.batch.size"] >= len(batch.links)
        assert batch.parent is None and batch.status.status_code is not StatusCode.ERROR
    points = observed.points("moderator_engine_batch_size_count")
    assert sum(points.values()) == len(batches)


def test_without_a_traceparent_the_event_span_is_a_root_in_the_derived_trace(
    tmp_path: Path, observed: Observed
) -> None:
    verdicts = _run(tmp_path, [None, [("traceparent", b"garbage")]])
    events = _by_event(observed.finished())
    for event_id in ("ev-0", "ev-1"):
        derived = hashlib.sha256(event_id.encode()).hexdigest()[:32]
        span = events[event_id]
        assert span.parent is None
        assert f"{span.get_span_context().trace_id:032x}" == derived
        record = verdicts[event_id]
        assert json.loads(record.value or b"{}")["trace_id"] == derived
        assert _header(record, "traceparent").split("-")[1:3] == [
            derived,
            f"{span.get_span_context().span_id:016x}",
        ]


def test_an_unsampled_upload_records_no_span_and_keeps_its_flags(
    tmp_path: Path, observed: Observed
) -> None:
    traceparent = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-00"
    verdicts = _run(tmp_path, [[("traceparent", traceparent.encode())]])
    assert observed.finished() == []
    _, trace_id, parent, flags = _header(verdicts["ev-0"], "traceparent").split("-")
    assert (trace_id, flags) == (UPSTREAM_TRACE, "00")
    assert parent != UPSTREAM_SPAN  # our (unrecorded) span, not the producer's


def test_a_failed_fetch_marks_its_span_and_the_event_span_failed(
    tmp_path: Path, observed: Observed
) -> None:
    broker, store = MemoryBroker(), InMemoryObjectStore()
    event = {"event_id": "gone", "tenant_id": "acme", "object": {"bucket": BUCKET, "key": "acme/x"}}
    broker.produce_plain("uploads", json.dumps(event).encode(), key=b"acme")
    instance = Instance(broker, store, settings_for(write_policies(tmp_path / "p"))).start()
    try:
        wait_for(lambda: len(broker.records("moderation.verdicts")) == 1, what="verdict")
    finally:
        instance.shutdown()
    spans = observed.finished()
    event_span = _by_event(spans)["gone"]
    assert event_span.status.status_code is StatusCode.ERROR
    code = json.loads(broker.records("moderation.verdicts")[0].value or b"{}")["error"]["code"]
    assert (event_span.attributes or {})["error.type"] == code
    fetch = next(s for s in spans if s.name == "moderator.fetch")
    assert fetch.status.status_code is StatusCode.ERROR
    assert (fetch.attributes or {})["error.type"] == code
    assert _children(spans, event_span) == ["moderator.decide", "moderator.fetch"]


def test_stage_latencies_cache_lookups_and_verdicts_are_counted(
    tmp_path: Path, observed: Observed
) -> None:
    broker, store = MemoryBroker(), InMemoryObjectStore()
    image = png(7)
    for n in range(2):  # the same bytes twice: the second is a cache hit (once the first is in)
        store.put(BUCKET, f"acme/same-{n}.png", image)
    settings = settings_for(write_policies(tmp_path / "p"), **{"fetch.concurrency": 1})
    instance = Instance(broker, store, settings).start()
    try:
        for n in range(2):
            ev = {
                "event_id": f"same-{n}",
                "tenant_id": "acme",
                "object": {"bucket": BUCKET, "key": f"acme/same-{n}.png"},
            }
            broker.produce_plain("uploads", json.dumps(ev).encode(), key=b"acme")
            wait_for(
                lambda n=n: len(broker.records("moderation.verdicts")) == n + 1, what="verdict"
            )
    finally:
        instance.shutdown()
    stages = {
        dict(k)["stage"]: v
        for k, v in observed.points("moderator_stage_latency_seconds_count").items()
    }
    # The hit is answered before its object is decoded: one decode, by the event that missed.
    assert stages == {"fetch": 2, "decode": 1, "queue": 1, "infer": 1, "decide": 2, "total": 2}
    cache = {
        dict(k)["result"]: v for k, v in observed.points("moderator_cache_requests_total").items()
    }
    assert cache == {"miss": 1, "hit": 1}
    verdicts = observed.points("moderator_verdicts_total")
    assert sum(verdicts.values()) == 2
    for labels in verdicts:
        assert dict(labels)["tenant"] == "acme"
        assert dict(labels)["category"] != ""
    hit = _by_event(observed.finished())["same-1"]
    assert (hit.attributes or {})["moderator.cache.hit"] is True
    assert (hit.attributes or {})["moderator.source"] == "cache"
