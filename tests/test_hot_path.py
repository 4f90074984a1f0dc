"""Per-event work the zero-latency path no longer repeats (docs/performance.md, "CPU per event"):
a policy relabelled for a surface shares its hashes instead of hashing itself again; the audit
record's JSON reuses the verdict's and a cached policy document, byte for byte the same; a
checkpoint's publish span reads no headers, and an event starts no child spans, when no span is
recorded."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pydantic_core
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer

from moderator.emit import serialise
from moderator.emit.records import OutRecord, cloudevent_headers, trace_from_headers
from moderator.emit.records import verdict_outputs as outputs
from moderator.emit.serialise import audit_json
from moderator.engine.base import EngineResult
from moderator.engine.window import WindowResult
from moderator.errors import ErrorCode
from moderator.events.upload import UploadEvent
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    ReplayInfo,
    Timings,
    Verdict,
    VerdictError,
    VerdictObject,
)
from moderator.obs.event import EventTelemetry
from moderator.obs.metrics import no_metrics
from moderator.obs.tracing import (
    TRACER_NAME,
    build_tracer_provider,
    new_tracer_provider,
    publish_span,
    records_spans,
)
from moderator.policy.compiled import TenantPolicy, compile_policy
from moderator.policy.resolve import resolve
from tests.policy_fixtures import KEY_PREFIX, directory

# -- the policy's hashes -----------------------------------------------------------------------


def _policy() -> TenantPolicy:
    files = directory(museum="categories: {O2: {block_at: 0.9, review_at: 0.6}}\n")
    return compile_policy(resolve(files, "museum", "default", KEY_PREFIX))


def test_a_relabelled_policy_does_not_hash_itself_again(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    expected = (policy.full_hash, policy.version, policy.prompt_sha256, policy.document())

    def no_hashing(self: TenantPolicy) -> dict[str, Any]:
        raise AssertionError("the policy document was built again")

    monkeypatch.setattr(TenantPolicy, "hash_document", no_hashing)
    for surface in ("post", "chat", "post"):  # one per event of a surface without overrides
        relabelled = policy.with_surface(surface)
        assert relabelled.surface == surface
        found = (
            relabelled.full_hash,
            relabelled.version,
            relabelled.prompt_sha256,
            relabelled.document(),
        )
        assert found == expected
    monkeypatch.undo()
    # ... and what it shares is what it would have computed alone
    fresh, reused = _policy(), _policy()
    relabelled = reused.with_surface("post")  # computes and shares reused's hashes
    alone = fresh.with_surface("post")
    del alone.__dict__["_digest"], alone.__dict__["version"], alone.__dict__["_document"]
    assert (relabelled.full_hash, relabelled.document()) == (alone.full_hash, alone.document())


# -- the audit record's JSON ---------------------------------------------------------------------


def _records() -> Iterator[tuple[Verdict, AuditRecord]]:
    """Verdicts and audit records of every shape: model, error, replay, with and without a
    policy document, unicode everywhere a string may hold it."""
    assessment = Assessment(
        rating="Unsafe", category="O2: Violence", rationale="é\u2028😀", score=0.5
    )
    error = VerdictError(code=ErrorCode.ENGINE_TIMEOUT, message="no result within 30s")
    replay = ReplayInfo(run_id="r1", original_decision="allow", path="engine")
    document = {"schema": "s", "prompt": 'Vérifie\n"ça"', "decision_table": {"O2": [0.6, 0.9]}}
    shapes = itertools.product(
        (assessment, None), (None, error), (None, replay), (document, None), ({}, {"seed": 1.5})
    )
    for found, failed, replayed, doc, generation in shapes:
        verdict = Verdict(
            event_id="e-1",
            tenant_id="museum",
            object=VerdictObject(bucket="up", key="museum/ü.jpg", sha256="ab", width=3, height=4),
            decision="block" if found else "review",
            assessment=found,
            policy=PolicyRef(tenant_id="museum", surface="post", version="v1"),
            model=ModelInfo(engine="fake", name="fake", categories=("O2",)),
            source="model" if failed is None else "error",
            replay=replayed,
            error=failed,
            timings_ms=Timings(fetch=1.25, total=3.5),
            decided_at=datetime(2026, 11, 29, 2, 0, 1, 500, tzinfo=UTC),
            trace_id="1" * 32,
        )
        audit = AuditRecord(
            verdict=verdict,
            uploaded_at=datetime(2026, 11, 29, 1, 0, tzinfo=UTC),
            context={"surface": "post", "note": "ünïcode", "generation": {"x": 1}},
            input=InputCoords(topic="uploads", partition=2, offset=9, timestamp_ms=17),
            instance_id="pod-w1",
            package_version="0.1.0",
            policy_hash="h1" if doc is not None else "h2",
            prompt_sha256=None,
            policy_document=doc,
            generation=generation,
            raw_output='{"rating": "Unsafe"}' if found else None,
            attempts=2,
        )
        yield verdict, audit


def test_the_audit_json_is_byte_for_byte_to_json() -> None:
    count = 0
    for verdict, audit in _records():
        assert audit_json(audit, verdict.to_json()) == audit.to_json()
        count += 1
    assert count == 32


def test_a_policy_document_is_serialised_once_per_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict, audit = next(_records())
    assert audit.policy_document is not None
    serialise._documents.clear()
    calls: list[Any] = []
    real = pydantic_core.to_json

    def counting(value: Any, **kwargs: Any) -> bytes:
        if isinstance(value, dict) and "prompt" in value:
            calls.append(value)
        return real(value, **kwargs)

    monkeypatch.setattr(serialise.pydantic_core, "to_json", counting)
    first = audit_json(audit, verdict.to_json())
    for _ in range(5):
        assert audit_json(audit, verdict.to_json()) == first
    assert len(calls) == 1


def test_another_document_under_the_same_hash_is_not_served_stale() -> None:
    verdict, audit = next(_records())
    audit_json(audit, verdict.to_json())  # caches the document of hash h1
    other = audit.model_copy(update={"policy_document": {"schema": "s", "prompt": "other"}})
    assert audit_json(other, verdict.to_json()) == other.to_json()


def test_the_document_cache_is_bounded() -> None:
    verdict, audit = next(_records())
    serialise._documents.clear()
    for i in range(serialise.MAX_DOCUMENTS * 3):
        record = audit.model_copy(update={"policy_hash": f"h{i}"})
        assert audit_json(record, verdict.to_json()) == record.to_json()
        assert len(serialise._documents) <= serialise.MAX_DOCUMENTS


def test_verdict_outputs_carry_the_same_values_and_headers_as_before() -> None:
    trace = trace_from_headers(None, "e-1")
    for verdict, audit in _records():
        out = outputs(
            verdict, audit, verdicts_topic="v", audit_topic="a", source="/m/g", trace=trace
        )
        assert [r.value for r in out] == [verdict.to_json(), audit.to_json()]
        parent = dict(out[0].headers)["traceparent"].decode()
        for record, kind in zip(out, ("verdict", "audit"), strict=True):
            assert record.headers == cloudevent_headers(
                ce_id=f"e-1/{kind}",
                ce_type=f"moderator.{kind}.v1",
                source="/m/g",
                subject="up/museum/ü.jpg",
                time=verdict.decided_at,
                traceparent=parent,
            )
        assert dict(out[1].headers)["traceparent"].decode() == parent


# -- the publish span ----------------------------------------------------------------------------


class _Untouchable(list[tuple[str, bytes]]):
    """Headers that fail the test when read."""

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        raise AssertionError("the headers were read")


def test_no_headers_are_read_for_a_span_nobody_records() -> None:
    records = [OutRecord("v", b"k", b"{}", _Untouchable()) for _ in range(3)]
    for tracer in (NoOpTracer(), build_tracer_provider("none").get_tracer(TRACER_NAME)):
        assert not records_spans(tracer)
        with publish_span(tracer, records, exactly_once=False, messages=3) as span:
            assert not span.is_recording()


def test_a_recorded_publish_span_still_links_every_event() -> None:
    provider = new_tracer_provider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer(TRACER_NAME)
    assert records_spans(tracer)
    parent = f"00-{'a' * 32}-{'b' * 16}-01".encode()
    records = [OutRecord("v", b"k", b"{}", [("traceparent", parent)])]
    with publish_span(tracer, records, exactly_once=False, messages=1):
        pass
    (span,) = spans.get_finished_spans()
    assert [(f"{ln.context.trace_id:032x}", f"{ln.context.span_id:016x}") for ln in span.links] == [
        ("a" * 32, "b" * 16)
    ]
    provider.shutdown()


# -- an event's spans ----------------------------------------------------------------------------


class _CountingTracer:
    """A tracer that counts the spans started through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sampler = getattr(inner, "sampler", None)
        self.started: list[str] = []

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.started.append(name)
        return self.inner.start_span(name, *args, **kwargs)


def _event_telemetry(tracer: Any) -> EventTelemetry:
    event = UploadEvent.model_validate(
        {"event_id": "e-1", "tenant_id": "museum", "object": {"bucket": "up", "key": "k"}}
    )
    coords = InputCoords(topic="uploads", partition=0, offset=1)
    return EventTelemetry(
        tracer, no_metrics(), trace_from_headers(None, "e-1"), event, coords, time.monotonic()
    )


def _walk(obs: EventTelemetry) -> None:
    for stage in ("fetch", "decode", "decide"):
        with obs.stage(stage) as span:
            span.set_attribute("x", 1)
    failed = EngineResult(error_code=ErrorCode.ENGINE_ERROR, error_message="x")
    obs.engine_calls([WindowResult(failed, 1.0, 2.0, 1)], time.time_ns())
    obs.coalesced(time.time_ns(), None)


def test_only_a_recorded_event_starts_child_spans() -> None:
    tracer = _CountingTracer(build_tracer_provider("none").get_tracer(TRACER_NAME))
    obs = _event_telemetry(tracer)
    _walk(obs)
    assert tracer.started == []  # not even the event span goes through the SDK
    # ... yet the outputs name an (unrecorded) event span of the event's trace, as before
    context = obs.context
    assert context.is_valid and not context.is_remote and not obs.span.is_recording()
    assert obs.trace.span_id == f"{context.span_id:016x}"
    assert (
        obs.trace.trace_id == f"{context.trace_id:032x}" == trace_from_headers(None, "e-1").trace_id
    )
    assert _event_telemetry(tracer).trace.span_id != obs.trace.span_id
    # ... while a recorded event still has every child span
    provider = new_tracer_provider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    obs = _event_telemetry(_CountingTracer(provider.get_tracer(TRACER_NAME)))
    _walk(obs)
    names = sorted(span.name for span in spans.get_finished_spans())
    assert names == [
        "moderator.coalesce",
        "moderator.decide",
        "moderator.decode",
        "moderator.fetch",
        "moderator.infer",
        "moderator.queue",
    ]
    provider.shutdown()
