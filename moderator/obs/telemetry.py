"""One process's telemetry: the metric provider behind `/metrics`, the readiness checks and
the loops `/healthz` watches.

Each `Telemetry` exports to its own `prometheus_client.CollectorRegistry`, never the global
one, so a test (or a process running the service and the audit sink) can hold several.
Gauges that describe state rather than events (the engine's busy ratio, readiness) are
refreshed by scrape hooks just before each scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from moderator.obs.health import Readiness
from moderator.obs.liveness import Liveness
from moderator.obs.metrics import Metrics

log = structlog.get_logger("moderator.obs")

METER = "moderator"


class Telemetry:
    """A MeterProvider read by Prometheus on a private registry, its `Metrics`, and the
    process's `Readiness`. `shutdown()` when done (idempotent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # No target_info or scope labels: the series carry only the labels of METRICS.
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        # The text exposition carries no exemplars: sampling them would cost every observation
        # a look at the current span for nothing.
        self._provider = MeterProvider(
            metric_readers=[reader],
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        self.metrics = Metrics(self._provider.get_meter(METER))
        self.readiness = Readiness()
        self.liveness = Liveness()
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._closed = False

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run `hook` before every scrape (it sets gauges; it should be quick)."""
        with self._lock:
            self._hooks.append(hook)

    def scrape(self) -> bytes:
        """The Prometheus text exposition of every metric, hooks run first."""
        with self._lock:
            hooks = list(self._hooks)
        for hook in hooks:
            try:
                hook()
            except Exception:  # one broken gauge must not cost the whole scrape
                log.exception("scrape_hook_failed")
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._provider.shutdown()
