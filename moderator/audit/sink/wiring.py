"""The audit sink's wiring: store, consumer and anchor export built from the settings.

The sink's twin of moderator/service.py; `moderator audit sink` and `moderator run
--with-audit-sink` call it, and so do the integration tests. `/metrics`, `/healthz` and
`/readyz` (checks `broker` and `audit_store`) are served on the `http` settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import structlog

from moderator.audit.db.store import AuditStore
from moderator.audit.integrity.anchors import AnchorSink, export_anchor, sinks_from_settings
from moderator.audit.sink.inputs import SinkStats, make_sink_consumer
from moderator.audit.sink.loop import AuditSink
from moderator.audit.sink.observe import SinkObserver
from moderator.errors import ModeratorError
from moderator.ingest.ports import Consumer
from moderator.obs.health import Contact
from moderator.obs.http import serving
from moderator.obs.probes import KafkaProbe
from moderator.obs.telemetry import Telemetry
from moderator.settings import Settings

log = structlog.get_logger("moderator.audit.sink.loop")


def run_audit_sink(
    settings: Settings,
    stop: threading.Event,
    *,
    store: AuditStore | None = None,
    consumer: Consumer | None = None,
    telemetry: Telemetry | None = None,
    finish: threading.Event | None = None,
) -> SinkStats:
    """Open the store (unless given), consume until `stop` is set (or, once `finish` is set,
    until caught up: `AuditSink.run`), close what was opened here.

    Serves the observability endpoint on `settings.http` unless `telemetry` is given (then its
    owner serves it; the sink adds its metrics and readiness checks to it). Raises
    AuditUnavailable when the database cannot be reached at start-up (the orchestrator
    restarts the sink; once running, outages are retried instead), ConfigError when the
    endpoint's port cannot be bound.
    """
    with serving(settings.http) if telemetry is None else nullcontext(telemetry) as current:
        current.readiness.expect("broker", "audit_store")
        own_store = store is None
        audit_store = store if store is not None else AuditStore.open(settings.audit.url)
        producer: Any = None
        try:
            anchor, producer = build_anchor(settings, audit_store)
            sink_consumer = consumer if consumer is not None else make_sink_consumer(settings)
            sink = AuditSink(
                settings,
                audit_store,
                sink_consumer,
                anchor=anchor,
                observer=_observer(settings, current, audit_store, sink_consumer),
            )
            return sink.run(stop, finish)
        finally:
            if producer is not None:
                producer.flush(5)
            if own_store:
                audit_store.close()


def _observer(
    settings: Settings, telemetry: Telemetry, store: AuditStore, consumer: Consumer
) -> SinkObserver:
    """The sink's metrics on `telemetry`, and its two readiness checks: the cluster (a metadata
    request when the sink has not heard from it lately) and the database (the chain heads
    query, likewise)."""
    probe = (
        KafkaProbe(
            settings.kafka,
            settings.kafka.topics.audit,
            client_id=f"moderator-audit-probe-{settings.instance_id}",
        )
        if hasattr(consumer, "list_topics")  # a real client, not the in-memory broker's
        else None
    )
    broker, database = Contact(probe), Contact(store.chain_heads)
    observer = SinkObserver(
        telemetry.metrics, broker=broker, database=database, chain_heads=store.chain_heads
    )
    telemetry.readiness.add("broker", broker)
    telemetry.readiness.add("audit_store", observer.store_check)
    return observer


def build_anchor(settings: Settings, store: AuditStore) -> tuple[Callable[[], None] | None, Any]:
    """The periodic anchor export the settings ask for (None when no destination is set), and
    the Kafka producer made for it (None unless audit.anchor_topic is set; the caller flushes)."""
    audit = settings.audit
    s3_client: Any = None
    producer: Any = None
    if audit.anchor_s3_uri is not None:
        from moderator.fetch.s3 import build_s3_client

        s3_client = build_s3_client(settings.s3)
    if audit.anchor_topic is not None:
        import confluent_kafka

        from moderator.ingest.kafka import build_client

        conf = settings.kafka.client_config()
        conf.update({"enable.idempotence": True, "acks": "all"})
        producer = build_client(confluent_kafka.Producer, conf, settings.kafka)
    sinks: list[AnchorSink] = sinks_from_settings(audit, s3_client=s3_client, producer=producer)
    if not sinks:
        return None, producer

    def anchor() -> None:
        export_anchor(store, sinks)

    return anchor, producer


def run_with_audit_sink(
    settings: Settings,
    stop: threading.Event,
    serve: Callable[[], object],
    *,
    telemetry: Telemetry | None = None,
    store: AuditStore | None = None,
    consumer: Consumer | None = None,
) -> None:
    """`moderator run --with-audit-sink`: the sink in a thread beside `serve` (the consumer).
    `stop` stops the consumer, which drains; once `serve` has returned, the sink goes on until
    it has stored what is left on its partitions, the drained events' records included, for
    at most `flow.drain_grace_s`. A sink failure stops the consumer too and is raised here.

    The process has one endpoint: the sink reports into `telemetry` when given (whoever
    serves it, and passes it to `serve` too); without it the sink's metrics and checks are
    not served, as `serve` holds the port. `store` and `consumer`: as for `run_audit_sink`."""
    failures: list[BaseException] = []
    finish, sink_stop = threading.Event(), threading.Event()

    def sink_thread() -> None:
        shared = telemetry if telemetry is not None else Telemetry()
        try:
            run_audit_sink(
                settings, sink_stop, store=store, consumer=consumer, telemetry=shared, finish=finish
            )
        except BaseException as exc:  # reported by the main thread after the consumer drained
            failures.append(exc)
            log.error("audit_sink_failed", error=str(exc))
            stop.set()

    thread = threading.Thread(target=sink_thread, name="audit-sink", daemon=True)
    thread.start()
    try:
        serve()
    finally:
        stop.set()
        finish.set()
        thread.join(settings.flow.drain_grace_s)
        if thread.is_alive():
            log.warning("audit_sink_not_caught_up", grace_s=settings.flow.drain_grace_s)
        sink_stop.set()
        thread.join()
    if failures:
        exc = failures[0]
        if isinstance(exc, ModeratorError):
            raise exc
        raise ModeratorError(f"audit sink failed: {exc}") from exc
