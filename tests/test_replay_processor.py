"""ReplayProcessor (filter, pace, rewrite into replayed verdicts) and Processor.submit_assessed.

The inner processor of the ReplayProcessor tests is `RecordingProcessor`, a test double that
records each call and answers at once with the records the real Processor would produce
(`verdict_outputs` of a real Verdict and AuditRecord) on the replay's live topic names. The last
tests use a real Processor, built as `moderator run` builds it, over an empty in-memory store.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from moderator.emit.records import OutRecord, Trace, verdict_outputs
from moderator.errors import ErrorCode
from moderator.events.upload import UploadEvent
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    ModelInfo,
    PolicyRef,
    Verdict,
    VerdictError,
    VerdictObject,
)
from moderator.fetch.store import InMemoryObjectStore
from moderator.pipeline.assemble import ObjectFacts
from moderator.pipeline.job import Done, Job
from moderator.pipeline.process import Processor
from moderator.policy.bundled import write_default_policy
from moderator.replay.originals import TopicOriginals
from moderator.replay.processor import (
    LIVE_AUDIT,
    LIVE_VERDICTS,
    Pacer,
    ReplayProcessor,
    model_id,
)
from moderator.replay.request import EventFilter
from moderator.service import build_pipeline
from tests.harness import settings_for

RUN = "r20261205T231500Z-3f9a"
OUT = "moderation.replay"
MODEL = ModelInfo(engine="guard", name="llama-guard-4", revision="r2")
MODEL_ID = model_id(MODEL.model_dump())
UNSAFE_O2 = Assessment(rating="Unsafe", category="O2: Violence, Harm, or Cruelty", score=0.7)
T0 = 1_764_381_600_000


def job(event_id: str = "ev-1", tenant: str = "acme", *, timestamp_ms: int | None = T0) -> Job:
    event = UploadEvent.model_validate(
        {
            "event_id": event_id,
            "tenant_id": tenant,
            "object": {"bucket": "uploads", "key": f"{tenant}/{event_id}.png"},
        }
    )
    coords = InputCoords(topic="uploads", partition=0, offset=7, timestamp_ms=timestamp_ms)
    return Job(event, coords, Trace("1" * 32, "2" * 16), time.monotonic())


def live_records(
    j: Job,
    *,
    decision: str = "block",
    source: str = "model",
    error: ErrorCode | None = None,
    assessment: Assessment | None = UNSAFE_O2,
) -> list[OutRecord]:
    """What the real Processor hands its `done` for `j`: the verdict and the audit record."""
    ev = j.event
    verdict = Verdict.model_validate(
        {
            "event_id": ev.event_id,
            "tenant_id": ev.tenant_id,
            "object": VerdictObject(bucket=ev.object.bucket, key=ev.object.key),
            "decision": decision,
            "assessment": None if error else assessment,
            "policy": PolicyRef(tenant_id=ev.tenant_id, surface="default", version="v2"),
            "model": MODEL,
            "source": source,
            "error": VerdictError(code=error, message="test") if error else None,
            "decided_at": datetime(2026, 12, 5, 23, 16, tzinfo=UTC),
            "trace_id": j.trace.trace_id,
        }
    )
    audit = AuditRecord(
        verdict=verdict,
        uploaded_at=None,
        context={},
        input=j.coords,
        instance_id="test-0",
        package_version="0",
        policy_hash="h" * 64,
        prompt_sha256=None,
    )
    return verdict_outputs(
        verdict,
        audit,
        verdicts_topic=LIVE_VERDICTS,
        audit_topic=LIVE_AUDIT,
        source="/moderator/g",
        trace=j.trace,
    )


class RecordingProcessor:
    """Test double of the pipeline's Processor: records calls, answers at once."""

    def __init__(self, answer: Callable[[Job], list[OutRecord]] = live_records) -> None:
        self.answer = answer
        self.submitted: list[Job] = []
        self.assessed: list[tuple[Job, Assessment, ObjectFacts]] = []
        self.answered: list[list[OutRecord]] = []
        self.buffered_bytes = 1234

    def submit(self, j: Job, done: Done) -> None:
        self.submitted.append(j)
        self._answer(j, done)

    def submit_assessed(
        self, j: Job, assessment: Assessment, facts: ObjectFacts, done: Done
    ) -> None:
        self.assessed.append((j, assessment, facts))
        self._answer(j, done)

    def _answer(self, j: Job, done: Done) -> None:
        records = self.answer(j)
        self.answered.append(records)
        done(records)


def original(
    event_id: str = "ev-1",
    *,
    decision: str = "allow",
    model: dict[str, Any] | None = None,
    assessment: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An original verdict as TopicOriginals keeps it."""
    return {
        "event_id": event_id,
        "tenant_id": "acme",
        "object": {
            "bucket": "uploads",
            "key": f"acme/{event_id}.png",
            "etag": '"e1"',
            "sha256": "ab" * 32,
            "format": "PNG",
            "width": 24,
            "height": 16,
        },
        "decision": decision,
        "assessment": assessment,
        "policy": {"tenant_id": "acme", "surface": "default", "version": "v1"},
        "model": model if model is not None else MODEL.model_dump(),
        "error": error,
    }


def replay(
    inner: RecordingProcessor,
    originals: dict[str, dict[str, Any]] | None = None,
    *,
    event_filter: EventFilter | None = None,
    reuse: bool = False,
    rate: float | None = None,
    check_tenant: Callable[[str, str], None] | None = None,
) -> ReplayProcessor:
    return ReplayProcessor(
        cast(Processor, inner),
        run_id=RUN,
        output_topic=OUT,
        originals=TopicOriginals(originals or {}, "moderation.verdicts"),
        event_filter=event_filter or EventFilter(),
        rate=rate,
        reuse_assessments=reuse,
        model_id=MODEL_ID,
        check_tenant=check_tenant,
    )


class Outputs:
    """A `done` callback that keeps what it was given (called once per job)."""

    def __init__(self) -> None:
        self.calls: list[list[OutRecord] | None] = []  # None: abandoned
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, records: list[OutRecord] | None) -> None:
        with self.lock:
            self.calls.append(records)
            self.times.append(time.monotonic())

    def only(self) -> OutRecord:
        assert len(self.calls) == 1
        only = self.calls[0]
        assert only is not None and len(only) == 1
        return only[0]


def verdict_of(record: OutRecord) -> Verdict:
    assert record.value is not None
    return Verdict.model_validate_json(record.value)


def headers(record: OutRecord) -> dict[str, bytes]:
    return dict(record.headers)


# -- filtering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_filter", "j"),
    [
        (EventFilter(tenants=frozenset({"kids"})), job(tenant="acme")),
        (EventFilter(from_ms=T0 + 1), job(timestamp_ms=T0)),
        (EventFilter(to_ms=T0), job(timestamp_ms=T0)),
        (EventFilter(sample=1e-9), job("ev-1")),
    ],
)
def test_filtered_events_are_done_with_nothing(event_filter: EventFilter, j: Job) -> None:
    inner = RecordingProcessor()
    proc = replay(inner, event_filter=event_filter)
    out = Outputs()
    proc.submit(j, out)
    assert out.calls == [[]]
    assert inner.submitted == [] and inner.assessed == []
    assert (proc.stats.kept, proc.stats.filtered) == (0, 1)


def test_kept_and_filtered_are_counted() -> None:
    inner = RecordingProcessor()
    proc = replay(inner, event_filter=EventFilter(tenants=frozenset({"acme"})))
    out = Outputs()
    for i, tenant in enumerate(["acme", "kids", "acme", "news", "acme"]):
        proc.submit(job(f"ev-{i}", tenant), out)
    assert (proc.stats.kept, proc.stats.filtered) == (3, 2)
    assert [j.event.event_id for j in inner.submitted] == ["ev-0", "ev-2", "ev-4"]
    assert len(out.calls) == 5
    assert proc.stats.paths == {"engine": 3}


def test_buffered_bytes_are_the_inner_processors() -> None:
    assert replay(RecordingProcessor()).buffered_bytes == 1234


# -- rewriting ---------------------------------------------------------------------------------


def test_a_kept_event_becomes_one_replayed_verdict_on_the_output_topic() -> None:
    inner = RecordingProcessor()
    proc = replay(inner, {"ev-1": original(decision="allow")})
    out = Outputs()
    j = job()
    proc.submit(j, out)
    [live] = inner.answered
    record = out.only()  # the audit record is dropped
    assert record.topic == OUT
    assert record.key == live[0].key == b"acme:uploads/acme/ev-1.png"
    verdict = verdict_of(record)
    assert verdict.replay is not None
    assert verdict.replay.run_id == RUN
    assert verdict.replay.original_decision == "allow"
    assert verdict.replay.path == "engine"
    # Everything else is the re-evaluation's verdict as it was made.
    assert verdict.model_copy(update={"replay": None}) == verdict_of(live[0])
    assert headers(record)["ce_id"] == f"ev-1/replay/{RUN}".encode()
    assert headers(record)["ce_type"] == b"moderator.verdict.v1"
    unchanged = {k: v for k, v in headers(live[0]).items() if k != "ce_id"}
    assert {k: v for k, v in headers(record).items() if k != "ce_id"} == unchanged
    assert json.loads(record.value or b"{}")["replay"]["run_id"] == RUN


def test_an_original_that_is_not_found_has_no_decision() -> None:
    proc = replay(RecordingProcessor(), {"other": original("other")})
    out = Outputs()
    proc.submit(job("ev-1"), out)
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.original_decision is None


def test_an_original_without_a_valid_decision_has_none() -> None:
    proc = replay(RecordingProcessor(), {"ev-1": original(decision="maybe")})
    out = Outputs()
    proc.submit(job("ev-1"), out)
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.original_decision is None


@pytest.mark.parametrize(
    ("source", "error", "path"),
    [
        ("model", None, "engine"),
        ("cache", None, "cache"),
        ("model", ErrorCode.OBJECT_NOT_FOUND, "error"),
        ("cache", ErrorCode.ENGINE_TIMEOUT, "error"),
    ],
)
def test_the_path_says_how_the_verdict_was_reached(
    source: str, error: ErrorCode | None, path: str
) -> None:
    inner = RecordingProcessor(lambda j: live_records(j, source=source, error=error))
    proc = replay(inner, {"ev-1": original()})
    out = Outputs()
    proc.submit(job(), out)
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.path == path
    assert proc.stats.paths == {path: 1}


def test_records_for_other_topics_are_dropped() -> None:
    def also_dlq(j: Job) -> list[OutRecord]:
        return [OutRecord("\x00replay-dlq", b"k", b"bad", []), *live_records(j)]

    proc = replay(RecordingProcessor(also_dlq))
    out = Outputs()
    proc.submit(job(), out)
    assert out.only().topic == OUT


# -- reusing assessments -----------------------------------------------------------------------

ASSESSED = UNSAFE_O2.model_dump()


def test_reuse_re_decides_the_original_assessment_of_the_same_model() -> None:
    inner = RecordingProcessor()
    proc = replay(inner, {"ev-1": original(assessment=ASSESSED)}, reuse=True)
    out = Outputs()
    j = job()
    proc.submit(j, out)
    assert inner.submitted == []
    assert len(inner.assessed) == 1
    got_job, assessment, facts = inner.assessed[0]
    assert got_job is j
    assert assessment == UNSAFE_O2
    assert facts == ObjectFacts(etag='"e1"', sha256="ab" * 32, format="PNG", width=24, height=16)
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.path == "assessment"
    assert proc.stats.paths == {"assessment": 1}


def test_a_reused_assessment_that_ends_in_an_error_says_error() -> None:
    inner = RecordingProcessor(lambda j: live_records(j, error=ErrorCode.TENANT_MISMATCH))
    proc = replay(inner, {"ev-1": original(assessment=ASSESSED)}, reuse=True)
    out = Outputs()
    proc.submit(job(), out)
    assert len(inner.assessed) == 1
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.path == "error"


@pytest.mark.parametrize(
    ("why", "stored", "reuse"),
    [
        ("not asked", original(assessment=ASSESSED), False),
        (
            "other model",
            original(assessment=ASSESSED, model={**MODEL.model_dump(), "revision": "r1"}),
            True,
        ),
        (
            "other engine",
            original(assessment=ASSESSED, model={"engine": "fake", "name": "fake"}),
            True,
        ),
        ("no model", {**original(assessment=ASSESSED), "model": None}, True),
        (
            "error",
            original(assessment=ASSESSED, error={"code": "engine_timeout", "message": ""}),
            True,
        ),
        ("no assessment", original(assessment=None), True),
        ("invalid assessment", original(assessment={"rating": "Maybe", "category": "O2"}), True),
    ],
)
def test_otherwise_the_event_is_evaluated_again(
    why: str, stored: dict[str, Any], reuse: bool
) -> None:
    inner = RecordingProcessor()
    proc = replay(inner, {"ev-1": stored}, reuse=reuse)
    out = Outputs()
    proc.submit(job(), out)
    assert inner.assessed == [], why
    assert len(inner.submitted) == 1, why
    replayed = verdict_of(out.only()).replay
    assert replayed is not None
    assert replayed.path == "engine"


def test_reuse_without_an_original_evaluates_again() -> None:
    inner = RecordingProcessor()
    proc = replay(inner, {}, reuse=True)
    proc.submit(job(), Outputs())
    assert len(inner.submitted) == 1
    assert inner.assessed == []


# -- pacing ------------------------------------------------------------------------------------
# Bounds are generous: only "spread out, not all at once" and "not stuck" are checked.


def test_pacer_spreads_starts_at_the_rate() -> None:
    pacer = Pacer(50)
    t0 = time.monotonic()
    for _ in range(20):
        pacer.wait()
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 3.0  # 19 intervals of 20 ms


def test_pacer_is_shared_fairly_by_threads() -> None:
    pacer = Pacer(50)
    t0 = time.monotonic()

    def five() -> None:
        for _ in range(5):
            pacer.wait()

    threads = [threading.Thread(target=five) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 3.0


def test_unpaced_never_waits() -> None:
    pacer = Pacer(None)
    t0 = time.monotonic()
    for _ in range(10_000):
        pacer.wait()
    assert time.monotonic() - t0 < 1.0


def test_a_paced_replay_starts_events_at_the_rate() -> None:
    inner = RecordingProcessor()
    proc = replay(inner, rate=50)
    out = Outputs()
    t0 = time.monotonic()
    try:
        for i in range(20):
            proc.submit(job(f"ev-{i}"), out)
        deadline = time.monotonic() + 10
        while len(out.calls) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.close()
    assert len(out.calls) == 20
    assert 0.3 <= out.times[-1] - t0 < 3.0
    assert [j.event.event_id for j in inner.submitted] == [f"ev-{i}" for i in range(20)]


def test_stopping_abandons_the_events_still_waiting_for_their_slot() -> None:
    stop = threading.Event()
    inner = RecordingProcessor()
    proc = ReplayProcessor(
        cast(Processor, inner),
        run_id=RUN,
        output_topic=OUT,
        originals=TopicOriginals({}, "moderation.verdicts"),
        event_filter=EventFilter(),
        rate=1,
        reuse_assessments=False,
        model_id=MODEL_ID,
        stop=stop,
    )
    out = Outputs()
    try:
        for i in range(5):
            proc.submit(job(f"ev-{i}"), out)
        deadline = time.monotonic() + 5
        while not out.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()  # the other four wait for slots a second apart
        while len(out.calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.close()
    assert [j.event.event_id for j in inner.submitted] == ["ev-0"]
    assert out.calls[0] is not None and out.calls[1:] == [None] * 4
    assert out.times[-1] - out.times[0] < 2.0, "abandoned at once, not at the rate"


def test_filtered_events_are_not_paced() -> None:
    proc = replay(RecordingProcessor(), event_filter=EventFilter(tenants=frozenset({"x"})), rate=1)
    out = Outputs()
    t0 = time.monotonic()
    try:
        for i in range(20):
            proc.submit(job(f"ev-{i}"), out)
    finally:
        proc.close()
    assert time.monotonic() - t0 < 0.5
    assert out.calls == [[]] * 20


def test_each_kept_event_is_checked_for_a_policy_before_it_starts() -> None:
    """The run's warning about a tenant without a policy comes from here: kept events only."""
    checked: list[tuple[str, str]] = []
    inner = RecordingProcessor()
    processor = replay(
        inner,
        event_filter=EventFilter(tenants=frozenset({"acme", "news"})),
        check_tenant=lambda tenant, surface: checked.append((tenant, surface)),
    )
    for j in (job("ev-1", "news"), job("ev-2", "kids"), job("ev-3", "acme")):
        processor.submit(j, Outputs())
    assert checked == [("news", "default"), ("acme", "default")]
    assert len(inner.submitted) == 2  # the run goes on: the pipeline decides the error


# -- Processor.submit_assessed: a real Processor ---------------------------------------------


def real_pipeline(tmp_path: Path) -> Any:
    policies = tmp_path / "policies"
    write_default_policy(policies)
    (policies / "acme.yaml").write_text("categories:\n  O2: {action: review, block_at: 0.9}\n")
    (policies / "kids.yaml").write_text("categories:\n  O2: {action: block}\n")
    settings = settings_for(
        policies, **{"kafka.topics.verdicts": LIVE_VERDICTS, "kafka.topics.audit": LIVE_AUDIT}
    )
    store = InMemoryObjectStore()
    return build_pipeline(settings, store=store), store


def redecide(
    processor: Processor, j: Job, assessment: Assessment, facts: ObjectFacts
) -> list[OutRecord]:
    got: list[list[OutRecord]] = []
    finished = threading.Event()

    def done(records: list[OutRecord]) -> None:
        got.append(records)
        finished.set()

    processor.submit_assessed(j, assessment, facts, done)
    assert finished.wait(10), "submit_assessed never called done"
    assert len(got) == 1
    return got[0]


FACTS = ObjectFacts(etag='"e1"', sha256="cd" * 32, format="PNG", width=24, height=16)


@pytest.mark.parametrize(
    ("tenant", "assessment", "decision"),
    [
        ("acme", Assessment(rating="Unsafe", category="O2: Violence, Harm, or Cruelty"), "review"),
        ("acme", UNSAFE_O2.model_copy(update={"score": 0.95}), "block"),
        ("acme", UNSAFE_O2, "allow"),  # a score below block_at (no review_at) allows
        ("kids", UNSAFE_O2, "block"),
        ("kids", Assessment(rating="Safe", category="NA: None applying"), "allow"),
    ],
)
def test_submit_assessed_decides_under_the_current_policy(
    tmp_path: Path, tenant: str, assessment: Assessment, decision: str
) -> None:
    pipeline, store = real_pipeline(tmp_path)
    try:
        j = job("ev-9", tenant)
        records = redecide(pipeline.processor, j, assessment, FACTS)
    finally:
        pipeline.close()
    assert [r.topic for r in records] == [LIVE_VERDICTS, LIVE_AUDIT]
    verdict = verdict_of(records[0])
    assert verdict.decision == decision
    assert verdict.assessment == assessment
    assert verdict.source == "cache"
    assert verdict.error is None
    assert verdict.policy.tenant_id == tenant
    assert verdict.policy.version == pipeline.policies.resolve(tenant, "default").version
    assert (verdict.object.sha256, verdict.object.width) == (FACTS.sha256, FACTS.width)
    assert store.gets == 0  # the store is empty: a fetch would have failed


def test_submit_assessed_refuses_an_object_outside_the_tenant(tmp_path: Path) -> None:
    pipeline, store = real_pipeline(tmp_path)
    event = UploadEvent.model_validate(
        {
            "event_id": "ev-x",
            "tenant_id": "acme",
            "object": {"bucket": "uploads", "key": "kids/a.png"},
        }
    )
    j = Job(event, InputCoords(topic="uploads", partition=0, offset=1), Trace("3" * 32, None), 0.0)
    try:
        records = redecide(pipeline.processor, j, UNSAFE_O2, FACTS)
    finally:
        pipeline.close()
    verdict = verdict_of(records[0])
    assert verdict.error is not None
    assert verdict.error.code == ErrorCode.TENANT_MISMATCH
    assert verdict.assessment is None
    assert verdict.decision != "allow"
    assert store.gets == 0


def test_a_replay_over_a_real_processor_reuses_the_assessment(tmp_path: Path) -> None:
    pipeline, store = real_pipeline(tmp_path)
    engine_id = model_id(pipeline.engine.info.model_dump())
    stored = original(
        "ev-1",
        decision="block",
        assessment=Assessment(
            rating="Unsafe", category="O2: Violence, Harm, or Cruelty"
        ).model_dump(),
        model=pipeline.engine.info.model_dump(),
    )
    proc = ReplayProcessor(
        pipeline.processor,
        run_id=RUN,
        output_topic=OUT,
        originals=TopicOriginals({"ev-1": stored}, "moderation.verdicts"),
        event_filter=EventFilter(),
        rate=None,
        reuse_assessments=True,
        model_id=engine_id,
    )
    got: list[list[OutRecord]] = []
    finished = threading.Event()

    def done(records: list[OutRecord]) -> None:
        got.append(records)
        finished.set()

    try:
        proc.submit(job("ev-1", "acme"), done)
        assert finished.wait(10)
    finally:
        pipeline.close()
    [record] = got[0]
    verdict = verdict_of(record)
    assert record.topic == OUT
    assert verdict.decision == "review"  # acme now reviews O2 where the original blocked
    assert verdict.replay is not None
    assert (verdict.replay.original_decision, verdict.replay.path) == ("block", "assessment")
    assert store.gets == 0
