"""Wiring: settings → engine, window, store, policies, cache, processor, loop."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from moderator.engine.base import Engine
from moderator.engine.factory import build_engine, build_window
from moderator.engine.window import EngineWindow
from moderator.fetch.decode import DecodeLimits
from moderator.fetch.store import ObjectStore
from moderator.ingest.kafka import make_consumer, make_producer
from moderator.ingest.loop import IngestLoop, LoopStats
from moderator.ingest.ports import Consumer, Producer
from moderator.pipeline.cache import VerdictCache
from moderator.pipeline.process import OutputTopics, Processor
from moderator.policy.base import PolicyProvider
from moderator.policy.registry import PolicyRegistry
from moderator.settings import Settings

log = structlog.get_logger("moderator.service")


@dataclass
class Pipeline:
    engine: Engine
    window: EngineWindow
    processor: Processor
    cache: VerdictCache
    policies: PolicyProvider

    def close(self) -> None:
        self.processor.close()
        self.window.close()
        self.engine.close()
        if isinstance(self.policies, PolicyRegistry):
            self.policies.close()


def build_policies(settings: Settings) -> PolicyRegistry:
    """The tenant policies named by the settings, not yet polling for changes.

    Raises ConfigError (file:line: reason) when any policy file is invalid.
    """
    return PolicyRegistry(
        settings.policies.dir,
        settings.tenancy,
        default_for_unknown=settings.policies.default_for_unknown,
        poll_interval_s=settings.policies.poll_interval_s,
    )


def build_pipeline(
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    engine: Engine | None = None,
    policies: PolicyProvider | None = None,
) -> Pipeline:
    """Build the processing side. Raises ConfigError for bad policies or a missing engine extra.

    `policies` defaults to build_policies(settings); `scan` passes a wrapped provider.
    """
    policies = policies if policies is not None else build_policies(settings)
    engine = engine if engine is not None else build_engine(settings.engine)
    window = build_window(engine, settings.engine)
    cache = VerdictCache(settings.cache.max_entries)
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
        topics=OutputTopics(
            verdicts=settings.kafka.topics.verdicts,
            audit=settings.kafka.topics.audit,
            source=f"/moderator/{settings.kafka.group_id}",
        ),
        instance_id=settings.instance_id,
        max_buffered_bytes=settings.flow.high_buffered_bytes,
    )
    return Pipeline(engine, window, processor, cache, policies)


def run_service(
    settings: Settings,
    stop: threading.Event,
    *,
    pipeline: Pipeline | None = None,
    consumer: Consumer | None = None,
    producer: Producer | None = None,
) -> LoopStats:
    """Consume until `stop` is set; drain, checkpoint, close. Raises FatalKafkaError."""
    pipeline = pipeline if pipeline is not None else build_pipeline(settings)
    kafka_consumer: Consumer = consumer if consumer is not None else make_consumer(settings)
    kafka_producer: Producer = producer if producer is not None else make_producer(settings)
    if isinstance(pipeline.policies, PolicyRegistry):
        pipeline.policies.start()  # hot reload while consuming
    loop = IngestLoop(
        settings=settings,
        consumer=kafka_consumer,
        producer=kafka_producer,
        processor=pipeline.processor,
    )
    try:
        loop.run(stop)
    finally:
        try:
            kafka_consumer.close()
        finally:
            pipeline.close()
            kafka_producer.flush(5)
    return loop.stats
