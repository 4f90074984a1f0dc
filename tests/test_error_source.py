"""A verdict's `source` says where its decision came from: `model`, `cache` or `error`.

An error verdict (no usable assessment, so the policy's `on_error` rule decided) says `error`,
whether processing failed before the engine (fetch, decode, tenant) or the engine failed
(engine_error, engine_timeout, unparseable_output). The real Processor runs here over an
in-memory store with an engine that fails on purpose for some images; the verdict, its audit
record, the audit store's indexed column and the event span all carry the same source.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from PIL.Image import Image as PILImage
from pydantic import ValidationError

from moderator.audit.fields import record_fields
from moderator.emit.records import OutRecord, Trace
from moderator.engine.base import EngineRequest, EngineResult
from moderator.engine.fake import FakeEngine
from moderator.errors import ErrorCode
from moderator.events.upload import UploadEvent
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Source,
    Timings,
    Verdict,
)
from moderator.fetch.store import InMemoryObjectStore
from moderator.pipeline.assemble import (
    FrameOutcome,
    ObjectFacts,
    Provenance,
    assemble,
    error_outcome,
)
from moderator.pipeline.job import Job
from moderator.replay.processor import replay_path
from moderator.service import Pipeline, build_pipeline
from moderator.settings import FakeEngineSettings
from tests.harness import BUCKET, settings_for, wait_for, write_policies

# Solid colours the test engine treats specially (PNG keeps them exact through decoding).
TIMEOUT_RGB = (255, 0, 0)
UNPARSEABLE_RGB = (0, 255, 0)
RAISE_RGB = (0, 0, 255)
UNSAFE = Assessment(rating="Unsafe", category="O2: Violence, Harm, or Cruelty", score=0.9)


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), rgb).save(buf, "PNG")
    return buf.getvalue()


class FailingEngine:
    """The fake engine, except that it times out, answers nonsense or raises for the colours
    above (a raise is retried item by item by the window, then becomes engine_error)."""

    def __init__(self) -> None:
        self._fake = FakeEngine(FakeEngineSettings())

    @property
    def info(self) -> ModelInfo:
        return self._fake.info

    @property
    def input_size(self) -> int:
        return self._fake.input_size

    def classify(self, batch: Sequence[EngineRequest]) -> list[EngineResult]:
        colours = [_colour(request.image) for request in batch]
        if RAISE_RGB in colours:
            raise RuntimeError("engine failed on purpose")
        return [
            self._answer(request, colour) for request, colour in zip(batch, colours, strict=True)
        ]

    def close(self) -> None:
        self._fake.close()

    def _answer(self, request: EngineRequest, colour: tuple[int, ...]) -> EngineResult:
        if colour == TIMEOUT_RGB:
            return EngineResult(error_code=ErrorCode.ENGINE_TIMEOUT, error_message="too slow")
        if colour == UNPARSEABLE_RGB:
            return EngineResult(
                error_code=ErrorCode.UNPARSEABLE_OUTPUT,
                error_message="no JSON",
                raw_output="I cannot say.",
            )
        (result,) = self._fake.classify([request])
        return result


def _colour(image: PILImage) -> tuple[int, ...]:
    pixel = image.convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return tuple(pixel)


class Run:
    """The pipeline's processor, and what it handed back for each event id."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.records: dict[str, list[OutRecord]] = {}
        self._lock = threading.Lock()

    def submit(self, event_id: str, tenant: str, key: str) -> None:
        event = UploadEvent.model_validate(
            {"event_id": event_id, "tenant_id": tenant, "object": {"bucket": BUCKET, "key": key}}
        )
        coords = InputCoords(topic="uploads", partition=0, offset=len(self.records))
        job = Job(event, coords, Trace(f"{len(event_id):032x}", None), time.monotonic())

        def done(records: list[OutRecord]) -> None:
            with self._lock:
                self.records[event_id] = records

        self.pipeline.processor.submit(job, done)
        wait_for(lambda: event_id in self.records, 30, f"the verdict of {event_id}")

    def verdict(self, event_id: str) -> Verdict:
        return Verdict.model_validate_json(self._value(event_id, "moderation.verdicts"))

    def audit(self, event_id: str) -> dict[str, object]:
        doc = json.loads(self._value(event_id, "moderation.audit"))
        assert isinstance(doc, dict)
        return doc

    def _value(self, event_id: str, topic: str) -> bytes:
        (value,) = [r.value for r in self.records[event_id] if r.topic == topic]
        assert value is not None
        return value


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def run(tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[Run]:
    store = InMemoryObjectStore()
    store.put(BUCKET, "acme/good.png", solid_png((10, 20, 30)))
    store.put(BUCKET, "acme/again.png", solid_png((10, 20, 30)))
    store.put(BUCKET, "acme/slow.png", solid_png(TIMEOUT_RGB))
    store.put(BUCKET, "acme/nonsense.png", solid_png(UNPARSEABLE_RGB))
    store.put(BUCKET, "acme/crash.png", solid_png(RAISE_RGB))
    store.put(BUCKET, "acme/broken.png", solid_png((1, 2, 3))[:40])
    store.put(BUCKET, "kids/elsewhere.png", solid_png((4, 5, 6)))
    settings = settings_for(write_policies(tmp_path / "policies"))
    pipeline = build_pipeline(
        settings, store=store, engine=FailingEngine(), tracer=spans[0].get_tracer("test")
    )
    try:
        yield Run(pipeline)
    finally:
        pipeline.close()


def test_judged_cached_and_failed_verdicts_each_name_their_source(run: Run) -> None:
    run.submit("judged", "acme", "acme/good.png")
    run.submit("cached", "acme", "acme/again.png")  # the same bytes: the verdict cache answers
    run.submit("failed", "acme", "acme/slow.png")
    judged, cached, failed = (run.verdict(e) for e in ("judged", "cached", "failed"))
    assert [v.source for v in (judged, cached, failed)] == ["model", "cache", "error"]
    assert judged.error is None and cached.error is None and failed.error is not None
    assert judged.assessment == cached.assessment and judged.assessment is not None


@pytest.mark.parametrize(
    ("tenant", "key", "code", "engine_called"),
    [
        ("acme", "acme/missing.png", ErrorCode.OBJECT_NOT_FOUND, False),
        ("acme", "acme/broken.png", ErrorCode.CORRUPT_IMAGE, False),
        ("acme", "kids/elsewhere.png", ErrorCode.TENANT_MISMATCH, False),
        ("nobody", "nobody/a.png", ErrorCode.UNKNOWN_TENANT, False),
        ("acme", "acme/slow.png", ErrorCode.ENGINE_TIMEOUT, True),
        ("acme", "acme/nonsense.png", ErrorCode.UNPARSEABLE_OUTPUT, True),
        ("acme", "acme/crash.png", ErrorCode.ENGINE_ERROR, True),
    ],
)
def test_every_error_verdict_says_error(
    run: Run,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    tenant: str,
    key: str,
    code: ErrorCode,
    engine_called: bool,
) -> None:
    run.submit("failed", tenant, key)
    verdict = run.verdict("failed")
    assert verdict.error is not None and verdict.error.code is code
    assert verdict.source == "error"
    assert verdict.assessment is None
    assert verdict.decision == "review"  # the test policies' on_error
    # `model` still names the engine when it was called and failed; null when it never ran.
    assert (verdict.model is not None) is engine_called
    audit = run.audit("failed")
    assert AuditRecord.model_validate(audit).verdict == verdict
    assert record_fields(audit).source == "error"
    (event_span,) = [s for s in spans[1].get_finished_spans() if s.name == "moderator.process"]
    assert (event_span.attributes or {})["moderator.source"] == "error"
    assert replay_path(verdict, reused=False) == "error"


def _assembled(outcome: FrameOutcome, source: Source) -> Verdict:
    event = UploadEvent.model_validate(
        {"event_id": "e", "tenant_id": "acme", "object": {"bucket": BUCKET, "key": "acme/e.png"}}
    )
    verdict, audit = assemble(
        event,
        outcome,
        policy=PolicyRef(tenant_id="acme", surface="default", version="0" * 16),
        model=None,
        facts=ObjectFacts(),
        source=source,  # the caller's claim, which an error outcome overrides
        timings=Timings(),
        decided_at=datetime(2026, 12, 1, tzinfo=UTC),
        trace_id="0" * 32,
        provenance=Provenance(
            coords=InputCoords(topic="uploads", partition=0, offset=0),
            instance_id="i",
            package_version="0",
            policy_hash="h" * 64,
            prompt_sha256=None,
        ),
    )
    assert audit.verdict == verdict
    return verdict


@pytest.mark.parametrize("claimed", ["model", "cache"])
def test_an_error_outcome_is_an_error_verdict_whatever_the_caller_says(claimed: Source) -> None:
    failed = error_outcome(ErrorCode.ENGINE_ERROR, "boom", "block")
    assert _assembled(failed, claimed).source == "error"
    judged = FrameOutcome(decision="block", assessment=UNSAFE)
    assert _assembled(judged, claimed).source == claimed


def test_the_schema_reads_every_source_and_only_those() -> None:
    base = json.loads(
        _assembled(FrameOutcome(decision="block", assessment=UNSAFE), "model").to_json()
    )
    for source in ("model", "cache", "error"):
        assert Verdict.model_validate({**base, "source": source}).source == source
    # A verdict written before `error` existed: an error verdict that says model still reads.
    older = {**base, "assessment": None, "error": {"code": "engine_error", "message": "x"}}
    assert Verdict.model_validate(older).source == "model"
    assert Verdict.model_validate({k: v for k, v in base.items() if k != "source"}).source == (
        "model"
    )
    with pytest.raises(ValidationError):
        Verdict.model_validate({**base, "source": "engine"})


def test_a_tenant_mismatch_names_the_tenant_and_what_it_may_read(run: Run) -> None:
    run.submit("failed", "acme", "kids/elsewhere.png")
    error = run.verdict("failed").error
    assert error is not None and error.code is ErrorCode.TENANT_MISMATCH
    assert error.message.startswith(f"s3://{BUCKET}/kids/elsewhere.png is outside tenant acme")
    assert "(allowed: s3://" in error.message
