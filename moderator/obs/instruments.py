"""Where the service's measurements are kept: a series per metric and label values, in dicts.

Every event makes about ten measurements (its stages, the cache, its verdict), on whichever
thread does the work. Through OpenTelemetry's SDK one cost 8-16 µs of CPU: the attributes
cleaned, hashed and looked up, an aggregation locked. Here a measurement is a dict lookup by
the label values in `METRICS` order and an addition under one lock, about 1-2 µs
(docs/performance.md, "Metrics"). A scrape reads the series as Prometheus families: a
`MetricStore` is a `prometheus_client` collector, registered on a private registry by
`moderator.obs.telemetry`.

A series appears once it has a measurement, as it did with the SDK's exporter; counters
count up only, histograms keep the buckets of their `MetricSpec`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from moderator.obs.metrics import MetricSpec

Key = tuple[str, ...]

MAX_LABEL_VALUES = 1000
"""Distinct values a `bounded` label keeps (`MetricSpec.bounded`): its values come from events,
which anyone who can produce to the uploads topic writes, and each new value is a new series in
every scrape. Later values are counted under `OTHER`."""
OTHER = "_other"


@dataclass
class _Histogram:
    counts: list[int]  # per bucket, not cumulative; the last is above every bound
    total: float = 0.0


@dataclass
class _Family:
    spec: MetricSpec
    values: dict[Key, float] = field(default_factory=dict)  # counters and gauges
    histograms: dict[Key, _Histogram] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # the bounded label's values kept
    bounded_at: int | None = field(init=False)  # the bounded label's place in a key

    def __post_init__(self) -> None:
        bounded = self.spec.bounded
        self.bounded_at = None if bounded is None else self.spec.labels.index(bounded)

    def copy(self) -> _Family:
        histograms = {k: _Histogram(list(h.counts), h.total) for k, h in self.histograms.items()}
        return _Family(self.spec, dict(self.values), histograms)

    def kept(self, key: Key) -> Key:
        """`key` with its bounded label's value replaced by `OTHER` once `MAX_LABEL_VALUES`
        other values are kept; call under the store's lock."""
        index = self.bounded_at
        if index is None:
            return key
        value = key[index]
        if value in self.seen:
            return key
        if len(self.seen) < MAX_LABEL_VALUES:
            self.seen.add(value)
            return key
        return (*key[:index], OTHER, *key[index + 1 :])


class MetricStore:
    """The series of every metric in `specs`; safe to record into from any thread."""

    def __init__(self, specs: Sequence[MetricSpec]) -> None:
        self._lock = threading.Lock()
        self._families = {spec.name: _Family(spec) for spec in specs}

    def add(self, name: str, key: Key, amount: float) -> None:
        """Count `amount` (not negative) on a counter's series."""
        if amount < 0:
            raise ValueError(f"{name}: a counter cannot count down ({amount})")
        family = self._families[name]
        values = family.values
        with self._lock:
            key = family.kept(key)
            values[key] = values.get(key, 0.0) + amount

    def observe(self, name: str, key: Key, value: float) -> None:
        """One observation on a histogram's series."""
        family = self._families[name]
        bounds = family.spec.buckets
        index = bisect.bisect_left(bounds, value)  # the first bucket whose bound is >= value
        with self._lock:
            key = family.kept(key)
            state = family.histograms.get(key)
            if state is None:
                state = family.histograms[key] = _Histogram([0] * (len(bounds) + 1))
            state.counts[index] += 1
            state.total += value

    def set(self, name: str, key: Key, value: float) -> None:
        """A gauge series' current value."""
        family = self._families[name]
        values = family.values
        with self._lock:
            values[family.kept(key)] = value

    def collect(self) -> Iterator[Metric]:
        """Every metric with a series, as Prometheus families, in `specs` order."""
        with self._lock:
            snapshot = [f.copy() for f in self._families.values() if f.values or f.histograms]
        for family in snapshot:
            yield _exposed(family)


def _exposed(found: _Family) -> Metric:
    spec, labels = found.spec, list(found.spec.labels)
    family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if spec.kind == "histogram":
        family = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        bounds = [*(f"{b:g}" for b in spec.buckets), "+Inf"]
        for key, state in found.histograms.items():
            running, buckets = 0, []
            for bound, count in zip(bounds, state.counts, strict=True):
                running += count
                buckets.append((bound, float(running)))
            family.add_metric(list(key), buckets, state.total)
        return family
    if spec.kind == "counter":
        family = CounterMetricFamily(spec.name, spec.help, labels=labels)
    else:
        family = GaugeMetricFamily(spec.name, spec.help, labels=labels)
    for key, value in found.values.items():
        family.add_metric(list(key), value)
    return family
