"""Per-event processing: every event ends in exactly one verdict, whatever fails on the way."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from opentelemetry.trace import NoOpTracer, Tracer

from moderator import __version__
from moderator.cpus import usable_cpus
from moderator.emit.records import verdict_outputs
from moderator.engine.base import EngineRequest
from moderator.engine.window import EngineWindow, WindowResult
from moderator.errors import ErrorCode, ProcessingError
from moderator.events.verdict import (
    Assessment,
    ModelInfo,
    PolicyRef,
    Source,
    Timings,
    VerdictError,
)
from moderator.fetch.budget import process_budget
from moderator.fetch.decode import DecodedImage, DecodeLimits, decode_image, sha256_hex
from moderator.fetch.store import FetchedObject, ObjectStore
from moderator.obs.event import EventTelemetry, start_counters
from moderator.obs.metrics import Metrics, no_metrics
from moderator.pipeline.ahead import DecodeAhead
from moderator.pipeline.assemble import (
    FrameOutcome,
    ObjectFacts,
    Provenance,
    assemble,
    error_outcome,
)
from moderator.pipeline.cache import CacheKey, VerdictCache
from moderator.pipeline.coalesce import (
    Answer,
    Coalescer,
    decide_cached,
    decide_frames,
    gather,
    wake,
)
from moderator.pipeline.event_errors import log_engine_error
from moderator.pipeline.held import HeldBytes
from moderator.pipeline.job import Done, Job, OutputTopics, event_log_context
from moderator.pipeline.jobpool import JobPool
from moderator.policy.base import CompiledPolicy, PolicyProvider
from moderator.policy.locations import outside_tenant

log = structlog.get_logger("moderator.pipeline")

_ENGINE_ERRORS = frozenset(
    {ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_TIMEOUT, ErrorCode.UNPARSEABLE_OUTPUT}
)
RGB_BYTES_PER_PIXEL = 4  # Pillow stores RGB with a padding byte


@dataclass
class _Run:
    job: Job
    policy: CompiledPolicy
    done: Done
    obs: EventTelemetry
    facts: ObjectFacts = field(default_factory=ObjectFacts)
    fetch_ms: float = 0.0
    held_bytes: int = 0


class Processor:
    """Runs fetch → decode → cache → engine → decide for each submitted event, concurrently.

    `submit` never raises; `done` is called exactly once per job, from a worker thread, with the
    verdict and audit records. Each job has its spans and metrics (moderator.obs.event); log
    lines while it runs carry its context and trace id.

    Identical model inputs are judged once (moderator.pipeline.coalesce, which says what
    `reads_policy` is): one event calls the engine, the others wait for it or find the cache.
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        window: EngineWindow,
        model: ModelInfo,
        input_size: int,
        policies: PolicyProvider,
        cache: VerdictCache,
        limits: DecodeLimits,
        max_object_bytes: int,
        concurrency: int,
        topics: OutputTopics,
        instance_id: str,
        max_buffered_bytes: int | None = None,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        reads_policy: bool | None = None,
        decode_ahead: int | None = None,
        decode_workers: int | None = None,
    ) -> None:
        self._store = store
        self._tracer: Tracer = tracer if tracer is not None else NoOpTracer()
        self._metrics = metrics if metrics is not None else no_metrics()
        start_counters(self._metrics)
        self._window = window
        self._model = model
        self._input_size = input_size
        self._policies = policies
        self._coalescer = Coalescer(cache, model, reads_policy)
        self._limits = limits
        self._max_bytes = max_object_bytes
        self._topics = topics
        self._instance_id = instance_id
        self._pool = JobPool(concurrency, "fetch")
        # Hashing and decoding hold the GIL for much of their time: more threads at it than
        # cores only hand the GIL back and forth (performance.md, "Fetch and decode workers").
        workers = decode_workers if decode_workers is not None else usable_cpus()
        decoders = min(workers, concurrency)  # only they reserve decode memory
        self._decoders = JobPool(decoders, "decode", max_chunk=1)
        self.decode_budget = process_budget(limits.budget_bytes, limits.timeout_s, decoders)
        self._held = HeldBytes(max_buffered_bytes)
        self._ahead = DecodeAhead(decode_ahead)

    @property
    def buffered_bytes(self) -> int:
        """Object and decoded-frame bytes held by jobs in progress (for backpressure).

        Memory inside decoders is not counted here: the decode budget bounds it separately.
        """
        return self._held.total

    @property
    def coalescer(self) -> Coalescer:
        return self._coalescer

    @property
    def decode_ahead(self) -> DecodeAhead:
        """The events decoded and not yet answered by the engine, and their limit."""
        return self._ahead

    def submit(self, job: Job, done: Done) -> None:
        self._pool.submit(functools.partial(self._start, job, done))

    def submit_assessed(
        self, job: Job, assessment: Assessment, facts: ObjectFacts, done: Done
    ) -> None:
        """Decide `job` from an assessment made before (a replay reusing the audit trail's)
        under the current policy, without fetching or judging the image again."""
        self._pool.submit(functools.partial(self._redecide, job, assessment, facts, done))

    def close(self) -> None:
        self._pool.close()
        self._decoders.close()

    def _start(self, job: Job, done: Done) -> None:
        if job.unwanted():  # nothing started yet: no span, no count
            done(None)
            return
        with event_log_context(job):
            run = self._run(job, done, ObjectFacts())
            if run is None:
                return
            self._held.admit()  # may wait long: the job may have become unwanted meanwhile
            if run.job.unwanted():
                self._drop(run)
            else:
                self._guarded(run, self._fetch, run)

    def _drop(self, run: _Run) -> None:
        self._held.add(run, None)
        run.obs.dropped()
        run.done(None)

    def _guarded(self, run: _Run, step: Callable[..., None], *args: object) -> None:
        """`step(*args)`; a failure of it ends `run` in an error verdict."""
        try:
            step(*args)
        except ProcessingError as exc:
            self._fail(run, exc.code, exc.message)
        except Exception as exc:  # a bug must still end in a verdict, never a lost event
            log.exception("processing_failed")
            self._fail(run, ErrorCode.ENGINE_ERROR, f"internal error: {type(exc).__name__}")

    def _redecide(self, job: Job, assessment: Assessment, facts: ObjectFacts, done: Done) -> None:
        ev = job.event
        if job.unwanted():
            done(None)
            return
        with event_log_context(job):
            run = self._run(job, done, facts)
            if run is None:
                return
            if not run.policy.allows_object(ev.object.bucket, ev.object.key):
                where = outside_tenant(run.policy, ev.object.bucket, ev.object.key)
                self._fail(run, ErrorCode.TENANT_MISMATCH, where)
                return
            outcome = FrameOutcome(decision=run.policy.decide(assessment), assessment=assessment)
            self._finish(run, outcome, source="cache")

    def _run(self, job: Job, done: Done, facts: ObjectFacts) -> _Run | None:
        """The job under its tenant's policy, its spans started; None once it has failed for
        want of a policy."""
        ev = job.event
        obs = EventTelemetry(self._tracer, self._metrics, job.trace, ev, job.coords, job.received)
        policy = self._policies.resolve(ev.tenant_id, ev.surface)
        if policy is not None:
            return _Run(job, policy, done, obs, facts)
        run = _Run(job, self._policies.fallback(ev.tenant_id, ev.surface), done, obs, facts)
        self._fail(run, ErrorCode.UNKNOWN_TENANT, self._policies.unknown_reason(ev.tenant_id))
        return None

    def _fetch(self, run: _Run) -> None:
        """On a fetch worker: the object's bytes, then on to a decode worker."""
        obj = run.job.event.object
        if not run.policy.allows_object(obj.bucket, obj.key):
            raise ProcessingError(
                ErrorCode.TENANT_MISMATCH, outside_tenant(run.policy, obj.bucket, obj.key)
            )
        if obj.size is not None and obj.size > self._max_bytes:
            raise ProcessingError(
                ErrorCode.OBJECT_TOO_LARGE, f"object is {obj.size} bytes (limit {self._max_bytes})"
            )
        t0 = time.monotonic()
        with run.obs.stage("fetch"):
            fetched = self._store.get(obj.bucket, obj.key, obj.version_id, self._max_bytes)
        run.fetch_ms = (time.monotonic() - t0) * 1000  # a hit's or a waiter's; a leader adds decode
        self._held.add(run, len(fetched.data))
        self._decoders.submit(functools.partial(self._decode_step, run, fetched, t0))

    def _decode_step(self, run: _Run, fetched: FetchedObject, t0: float) -> None:
        if run.job.unwanted():  # fetched while its partition left: not decoded, not judged
            self._drop(run)
            return
        with event_log_context(run.job):
            self._guarded(run, self._judge, run, fetched, t0)

    def _judge(self, run: _Run, fetched: FetchedObject, t0: float) -> None:
        """On a decode worker: the cache or a flight in progress answers, or the image is
        decoded and goes to the engine window."""
        sha256 = sha256_hex(fetched.data)
        run.facts = ObjectFacts(etag=fetched.etag, sha256=sha256)
        # The key needs only the bytes: a cached image or one being judged is never decoded.
        key = self._coalescer.key(sha256, run.policy)
        claim = self._coalescer.claim(key, functools.partial(self._coalesced, run, time.time_ns()))
        if claim.kind == "wait":
            self._held.add(run, None)  # it may have been called back already: touch nothing else
            return
        run.obs.cache(hit=claim.judged is not None)
        if claim.judged is not None:
            run.facts = dataclasses.replace(claim.judged.facts, etag=fetched.etag)
            self._finish(run, decide_cached(run.policy, claim.judged.frames), source="cache")
            return
        self._ahead.enter()  # given back by `_judged`, or below when nothing reaches the engine
        try:
            with run.obs.stage("decode"):
                image = self._decode(run, fetched.data, sha256)
            run.fetch_ms = (time.monotonic() - t0) * 1000
            frame_bytes = sum(f.width * f.height * RGB_BYTES_PER_PIXEL for f in image.frames)
            self._held.add(run, frame_bytes - len(fetched.data))
            requests = self._requests(run, image)
        except ProcessingError as exc:  # the same bytes fail the same way for every waiter
            self._ahead.leave()
            self._coalescer.fail(key, VerdictError(code=exc.code, message=exc.message), run.facts)
            raise
        except BaseException:
            self._ahead.leave()
            self._coalescer.abandon(key)  # nothing was submitted: the waiters get an error
            raise
        submitted_ns = time.time_ns()
        futures = [self._window.submit(r, tag=run.obs.context) for r in requests]
        gather(futures, functools.partial(self._judged, run, key, submitted_ns))

    def _requests(self, run: _Run, image: DecodedImage) -> list[EngineRequest]:
        """One engine request per frame of the image."""
        return [
            EngineRequest(
                request_id=f"{run.job.event.event_id}#{i}",
                image=frame,
                prompt=run.policy.prompt,
                categories=run.policy.categories,
            )
            for i, frame in enumerate(image.frames)
        ]

    def _decode(self, run: _Run, data: bytes, sha256: str) -> DecodedImage:
        image = decode_image(
            data, self._limits, self._input_size, self.decode_budget, sha256=sha256
        )
        run.facts = dataclasses.replace(
            run.facts, format=image.format, width=image.width, height=image.height
        )
        return image

    def _judged(
        self, run: _Run, key: CacheKey, submitted_ns: int, results: list[WindowResult]
    ) -> None:
        """The leader's results are in (on an engine window thread): cache them, decide the
        leader's verdict, then each waiter's, whatever happens to the leader's."""
        self._ahead.leave()
        waiters = self._coalescer.settle(key, results, run.facts)
        try:
            with event_log_context(run.job):  # bind the event's context on this thread too
                try:
                    run.obs.engine_calls(results, submitted_ns)
                    run.obs.served(len(waiters))
                    queue_ms = max(r.queue_ms for r in results)
                    infer_ms = max(r.infer_ms for r in results)
                    outcome = decide_frames(run.policy, results)
                    self._finish(run, outcome, source="model", queue_ms=queue_ms, infer_ms=infer_ms)
                except Exception as exc:
                    log.exception("assembly_failed")
                    self._fail(run, ErrorCode.ENGINE_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            wake(waiters, Answer(tuple(results), run.obs.context, run.facts))

    def _coalesced(self, run: _Run, joined_ns: int, answer: Answer) -> None:
        """A waiter's verdict from the leader's answer, under its own policy: source `model`,
        queue time its wait, infer time 0 (the engine time is the leader's)."""
        with event_log_context(run.job):
            try:
                run.obs.cache(hit=False)
                run.obs.coalesced(joined_ns, answer.leader)
                run.facts = dataclasses.replace(answer.facts, etag=run.facts.etag)
                if answer.error is not None:
                    self._fail(run, answer.error.code, answer.error.message)
                    return
                waited_ms = max(0.0, (time.time_ns() - joined_ns) / 1e6)
                outcome = decide_frames(run.policy, answer.results)
                self._finish(run, outcome, source="model", queue_ms=waited_ms)
            except Exception as exc:
                log.exception("assembly_failed")
                self._fail(run, ErrorCode.ENGINE_ERROR, f"internal error: {type(exc).__name__}")

    def _fail(self, run: _Run, code: ErrorCode, message: str) -> None:
        log.info("event_error", code=code.value, reason=message)
        self._finish(run, error_outcome(code, message, run.policy.on_error(code)), source="error")

    def _finish(
        self,
        run: _Run,
        outcome: FrameOutcome,
        *,
        source: Source,
        queue_ms: float = 0.0,
        infer_ms: float = 0.0,
    ) -> None:
        job, policy = run.job, run.policy
        if outcome.error is not None and source != "error":  # the engine's: `_fail` logs others
            log_engine_error(outcome.error.code, outcome.error.message)
        total_ms = (time.monotonic() - job.received) * 1000
        engine_failed = outcome.error is not None and outcome.error.code in _ENGINE_ERRORS
        ran_model = outcome.assessment is not None or engine_failed
        with run.obs.stage("decide"):
            verdict, audit = assemble(
                job.event,
                outcome,
                policy=PolicyRef(
                    tenant_id=job.event.tenant_id, surface=policy.surface, version=policy.version
                ),
                model=self._model if ran_model else None,
                facts=run.facts,
                source=source,
                timings=Timings(
                    fetch=round(run.fetch_ms, 3),
                    queue=round(queue_ms, 3),
                    infer=round(infer_ms, 3),
                    total=round(total_ms, 3),
                ),
                decided_at=datetime.now(UTC),
                trace_id=job.trace.trace_id,
                provenance=Provenance(
                    coords=job.coords,
                    instance_id=self._instance_id,
                    package_version=__version__,
                    policy_hash=policy.full_hash,
                    prompt_sha256=policy.prompt_sha256,
                    policy_document=policy.document(),
                ),
            )
            records = verdict_outputs(
                verdict,
                audit,
                verdicts_topic=self._topics.verdicts,
                audit_topic=self._topics.audit,
                source=self._topics.source,
                trace=run.obs.trace,
            )
        self._held.add(run, None)
        log.debug("verdict", decision=verdict.decision, source=verdict.source)
        run.obs.end(verdict, verdict.source)
        run.done(records)
