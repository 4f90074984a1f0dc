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
from prometheus_client import CollectorRegistry, generate_latest

from moderator.obs.health import Readiness
from moderator.obs.instruments import MetricStore
from moderator.obs.liveness import Liveness
from moderator.obs.metrics import METRICS, Metrics

log = structlog.get_logger("moderator.obs")


class Telemetry:
    """The metrics of `METRICS` read by Prometheus on a private registry, and the process's
    `Readiness` and `Liveness`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store = MetricStore(METRICS)
        self.registry.register(self.store)
        self.metrics = Metrics(self.store)
        self.readiness = Readiness()
        self.liveness = Liveness()
        self._hooks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def on_scrape(self, hook: Callable[[], object]) -> None:
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
