"""Wiring: settings → engine, window, store, policies, cache, processor, loop, and the
observability endpoint (`/metrics`, `/healthz`, `/readyz`: docs/observability.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import structlog
from opentelemetry.trace import Tracer

from moderator.engine.base import Engine, declared_capabilities
from moderator.engine.factory import build_engine, build_window, decode_ahead, warm_up
from moderator.engine.window import EngineWindow, WindowResult
from moderator.fetch.decode import DecodeLimits
from moderator.fetch.outage import StoreOutage
from moderator.fetch.store import ObjectStore
from moderator.ingest.jobs import LoopStats
from moderator.ingest.kafka import make_consumer, make_producer
from moderator.ingest.loop import IngestLoop
from moderator.ingest.ports import Consumer, Producer
from moderator.logs import report_sampled_out
from moderator.obs.engine import FAILING_S, EngineWatch
from moderator.obs.health import Check, CheckFn, Contact
from moderator.obs.http import serving
from moderator.obs.metrics import Metrics
from moderator.obs.probes import KafkaProbe
from moderator.obs.store import store_check
from moderator.obs.telemetry import Telemetry
from moderator.obs.tracing import TRACER_NAME, build_tracer_provider
from moderator.pipeline.cache import VerdictCache
from moderator.pipeline.job import OutputTopics
from moderator.pipeline.process import Processor
from moderator.policy.base import PolicyProvider
from moderator.policy.reach import Shortfall, shortfalls
from moderator.policy.registry import DEFAULT, SURFACE_DEFAULT, PolicyRegistry
from moderator.settings import Settings
from moderator.words import counted

log = structlog.get_logger("moderator.service")

WARM_UP_RETRY_S = 15.0


@dataclass
class Pipeline:
    engine: Engine
    window: EngineWindow
    processor: Processor
    cache: VerdictCache
    policies: PolicyProvider
    store: ObjectStore | None = None

    def close(self) -> None:
        self.processor.close()
        self.window.close()
        self.engine.close()
        if isinstance(self.policies, PolicyRegistry):
            self.policies.close()


def build_policies(settings: Settings, metrics: Metrics | None = None) -> PolicyRegistry:
    """The tenant policies named by the settings, not yet polling for changes.

    Raises ConfigError (file:line: reason) when any policy file is invalid.
    """
    return PolicyRegistry(
        settings.policies.dir,
        settings.tenancy,
        default_for_unknown=settings.policies.default_for_unknown,
        poll_interval_s=settings.policies.poll_interval_s,
        metrics=metrics,
    )


def build_pipeline(
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    engine: Engine | None = None,
    policies: PolicyProvider | None = None,
    metrics: Metrics | None = None,
    tracer: Tracer | None = None,
) -> Pipeline:
    """Build the processing side. Raises ConfigError for bad policies or a missing engine extra.

    `policies` defaults to build_policies(settings); `scan` passes a wrapped provider.
    `metrics`: where the window, the policies built here and the processor record;
    `tracer`: where the processor's event spans and the window's batch spans go (default:
    none recorded).
    """
    policies = policies if policies is not None else build_policies(settings, metrics)
    engine = engine if engine is not None else build_engine(settings.engine)
    if isinstance(policies, PolicyRegistry):
        warn_unreachable(policies, engine)
    window = build_window(engine, settings.engine, metrics, tracer)
    cache = VerdictCache(settings.cache.max_entries, per_tenant=settings.cache.scope == "tenant")
    if store is None:
        from moderator.fetch.s3 import S3ObjectStore

        store = S3ObjectStore(settings.s3)
    processor = Processor(
        store=store,
        window=window,
        model=engine.info,
        input_size=engine.input_size,
        policies=policies,
        cache=cache,
        limits=DecodeLimits.from_settings(settings.fetch),
        max_object_bytes=settings.fetch.max_object_bytes,
        concurrency=settings.fetch.concurrency,
        decode_workers=settings.fetch.decode_workers,
        topics=OutputTopics(
            verdicts=settings.kafka.topics.verdicts,
            audit=settings.kafka.topics.audit,
            source=f"/moderator/{settings.kafka.group_id}",
        ),
        instance_id=settings.instance_id,
        max_buffered_bytes=settings.flow.high_buffered_bytes,
        metrics=metrics,
        tracer=tracer,
        decode_ahead=decode_ahead(engine, settings.engine, settings.fetch),
    )
    return Pipeline(engine, window, processor, cache, policies, store)


def warn_unreachable(policies: PolicyRegistry, engine: Engine) -> list[Shortfall]:
    """Log `engine_cannot_raise` once per tenant whose policy (any surface) acts on categories
    the engine can never raise (moderator/policy/reach.py); what was logged. An engine that
    declares no capabilities is not checked."""
    declared = declared_capabilities(engine)
    if declared is None:
        return []
    resolved = [
        policy.resolved
        for tenant, status in sorted(policies.status().items())
        for surface in status.versions
        if (policy := policies.resolve(tenant, surface)) is not None
    ]
    found = shortfalls(resolved, engine.info.engine, declared)
    for gap in found:
        log.warning(
            "engine_cannot_raise",
            tenant=gap.tenant,
            engine=gap.engine,
            categories=list(gap.categories),
            judged=list(gap.judged),
            detail=gap.message(),
        )
    return found


def run_service(
    settings: Settings,
    stop: threading.Event,
    *,
    pipeline: Pipeline | None = None,
    consumer: Consumer | None = None,
    producer: Producer | None = None,
    telemetry: Telemetry | None = None,
    on_built: Callable[[Pipeline], None] | None = None,
) -> LoopStats:
    """Consume until `stop` is set; drain, checkpoint, close. Raises FatalKafkaError, and
    ConfigError when the endpoint's port cannot be bound.

    `on_built(pipeline)` is called with the pipeline built here (with the service's metrics
    and tracer), before consuming starts: how a caller such as the demo learns about it.

    The endpoint is served on `settings.http` from the start (before the engine loads) unless
    `telemetry` is given: then its owner serves it. A pipeline built here records into the
    telemetry's metrics and is warmed up (readiness waits for the engine's first answer); a
    pipeline passed in records where it was built to, and is ready at its first answered batch.
    """
    traces = settings.telemetry
    provider = build_tracer_provider(
        traces.traces, traces.otlp_endpoint, instance_id=settings.instance_id
    )
    try:
        with serving(settings.http) if telemetry is None else nullcontext(telemetry) as current:
            current.readiness.expect("broker", "engine", "policies")
            warm = pipeline is None
            tracer = provider.get_tracer(TRACER_NAME)
            if pipeline is None:
                pipeline = build_pipeline(settings, metrics=current.metrics, tracer=tracer)
                if on_built is not None:
                    on_built(pipeline)
            return _serve(
                settings, stop, current, pipeline, consumer, producer, warm=warm, tracer=tracer
            )
    finally:
        report_sampled_out()
        provider.shutdown()  # sends the last spans


def _serve(
    settings: Settings,
    stop: threading.Event,
    telemetry: Telemetry,
    pipeline: Pipeline,
    consumer: Consumer | None,
    producer: Producer | None,
    *,
    warm: bool,
    tracer: Tracer,
) -> LoopStats:
    kafka_consumer: Consumer = consumer if consumer is not None else make_consumer(settings)
    kafka_producer: Producer = producer if producer is not None else make_producer(settings)
    broker = _checks(settings, telemetry, pipeline, kafka_consumer)
    if isinstance(pipeline.policies, PolicyRegistry):
        pipeline.policies.start()  # hot reload while consuming
    finished = threading.Event()
    if warm:
        threading.Thread(
            target=_warm_up, args=(pipeline, finished), name="engine-warm-up", daemon=True
        ).start()
    loop = IngestLoop(
        settings=settings,
        consumer=kafka_consumer,
        producer=kafka_producer,
        processor=pipeline.processor,
        metrics=telemetry.metrics,
        broker=broker,
        tracer=tracer,
        renew_producer=(lambda: make_producer(settings)) if producer is None else None,
    )
    telemetry.liveness.add("consume loop", lambda: loop.turn_started, settings.http.stall_s)
    telemetry.readiness.add("checkpoints", loop.checkpoints)
    failed = True
    try:
        loop.run(stop)
        failed = False
    finally:
        finished.set()
        broker.close()  # no metadata probe may reach the consumer while it closes
        try:
            kafka_consumer.close()
        finally:
            pipeline.close()
            _last_flush(loop.producer, after_failure=failed)
    return loop.stats


def _last_flush(producer: Producer, *, after_failure: bool) -> None:
    """Hand the producer's last records to the broker. After the loop failed, a fenced or
    fatally failed producer raises here too: the loop's own error (a ConfigError naming the
    setting, a FatalKafkaError saying what to do) is the one to report. Nothing is lost by
    it: what the broker never acknowledged was never committed."""
    if not after_failure:
        producer.flush(5)
        return
    try:
        producer.flush(5)
    except Exception as exc:  # the client's own exception type; the loop's error goes on
        log.debug("last_flush_failed", error=str(exc))


def _checks(
    settings: Settings, telemetry: Telemetry, pipeline: Pipeline, consumer: Consumer
) -> Contact:
    """Add the service's readiness checks and gauges to `telemetry`; the broker's Contact,
    which the loop tells of each answer and which asks for the uploads topic's metadata when
    the loop has heard nothing lately."""
    probe = (
        KafkaProbe(
            settings.kafka,
            settings.kafka.topics.uploads,
            client_id=f"moderator-probe-{settings.instance_id}",
        )
        if hasattr(consumer, "list_topics")  # a real client, not the in-memory broker's
        else None
    )
    broker = Contact(probe)
    watch = EngineWatch(pipeline.engine, pipeline.window, telemetry.metrics)
    telemetry.readiness.add("broker", broker)
    telemetry.readiness.add("engine", watch.check)
    telemetry.readiness.add("policies", _policies_check(pipeline.policies))
    outage = getattr(pipeline.store, "outage", None)
    if isinstance(outage, StoreOutage):
        check = store_check(outage, telemetry.metrics)
        telemetry.readiness.add("s3", check)
        telemetry.on_scrape(check)
    telemetry.on_scrape(watch.collect)
    return broker


def _policies_check(policies: PolicyProvider) -> CheckFn:
    def check() -> Check:
        if not isinstance(policies, PolicyRegistry):
            return Check(True, "provided")
        status = policies.status()
        loaded = [tenant for tenant, s in status.items() if s.versions]
        stale = sorted(tenant for tenant in loaded if status[tenant].stale)
        broken = sorted(tenant for tenant, s in status.items() if not s.versions)
        detail = counted(len(loaded), "tenant") + " loaded"
        if stale:
            detail += f"; stale (last good version in force): {', '.join(stale)}"
        if broken:
            detail += f"; not loaded (its file fails, no version in force): {', '.join(broken)}"
        return Check(DEFAULT in loaded, detail)

    return check


def _warm_up(
    pipeline: Pipeline,
    finished: threading.Event,
    *,
    retry_s: float = WARM_UP_RETRY_S,
    failing_s: float = FAILING_S,
) -> None:
    """Warm-up requests until `finished`: at start, one every `retry_s` until the engine has
    answered; later, while every engine call has failed for more than `failing_s` and nothing
    waits in the window (no traffic to show the engine answering again), one every `retry_s`
    until one is answered, so that an idle pod's readiness comes back with the model server."""
    try:
        policy = pipeline.policies.fallback(DEFAULT, SURFACE_DEFAULT)
    except Exception:  # a provider without a default: readiness waits for the first batch
        log.exception("engine_warm_up_skipped")
        return
    window, size = pipeline.window, pipeline.engine.input_size

    def request() -> WindowResult:
        return warm_up(window, policy.prompt, policy.categories, size)

    while not finished.is_set() and not window.answered:
        started = time.monotonic()
        outcome = request().result
        if window.answered:
            log.info("engine_warm", seconds=round(time.monotonic() - started, 3))
            break
        if finished.is_set():
            return
        log.warning(
            "engine_warm_up_failed",
            code=outcome.error_code.value if outcome.error_code else None,
            error=outcome.error_message,
            retry_s=retry_s,
        )
        finished.wait(retry_s)
    probing = False
    while not finished.wait(retry_s):
        failing = window.answers.failing_s()
        if failing <= failing_s or window.pending:
            probing = False
            continue
        if not probing:
            log.warning("engine_probing", failing_s=round(failing), retry_s=retry_s)
            probing = True
        request()
        if window.answers.failing_s() == 0.0:
            log.info("engine_answering", failed_s=round(failing))
            probing = False
