"""CPU per measurement: the service's metric store against OpenTelemetry's metrics SDK.

Run from the project root:

    .venv/bin/python bench/metrics_cost.py [--calls N]

The calls each event makes (a stage latency, a verdict count with three labels, a cache count),
each `--calls` times in this thread, through `moderator.obs.metrics.Metrics` on a `MetricStore`
(what /metrics reads) and through an SDK meter with an in-memory reader, its instruments made
from the same `METRICS` table. The thread's CPU clock; the best of three rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from moderator.obs.metrics import METRICS, Metrics
from moderator.obs.telemetry import Telemetry

CALLS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("histogram, 1 label", "moderator_stage_latency_seconds", {"stage": "decode"}),
    (
        "counter, 3 labels",
        "moderator_verdicts_total",
        {"tenant": "t", "decision": "allow", "category": "none"},
    ),
    ("counter, 1 label", "moderator_cache_requests_total", {"result": "miss"}),
)


def sdk_instruments() -> tuple[dict[str, Any], MeterProvider]:
    """An SDK instrument per metric of the table (as the service made them before)."""
    provider = MeterProvider(
        metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter()
    )
    meter = provider.get_meter("moderator")
    made: dict[str, Any] = {}
    for spec in METRICS:
        if spec.kind == "counter":
            made[spec.name] = meter.create_counter(spec.instrument, unit=spec.unit)
        elif spec.kind == "histogram":
            made[spec.name] = meter.create_histogram(
                spec.instrument,
                unit=spec.unit,
                explicit_bucket_boundaries_advisory=list(spec.buckets),
            )
    return made, provider


def best_us(call: Callable[[], None], n: int) -> float:
    for _ in range(min(n, 1000)):  # warm: the series exist
        call()
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for _ in range(n):
            call()
        best = min(best, time.thread_time() - started)
    return 1e6 * best / n


def ours(metrics: Metrics, name: str, labels: dict[str, str]) -> Callable[[], None]:
    if name.endswith("_total"):
        return lambda: metrics.add(name, 1, **labels)
    return lambda: metrics.record(name, 0.003, **labels)


def theirs(instrument: Any, name: str, labels: dict[str, str]) -> Callable[[], None]:
    if name.endswith("_total"):
        return lambda: instrument.add(1, labels)
    return lambda: instrument.record(0.003, labels)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50_000, help="calls per kind and round")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    metrics = Telemetry().metrics
    instruments, provider = sdk_instruments()
    print(f"CPU per measurement, {args.calls} calls, best of 3 rounds (us):")
    print(f"  {'call':20s} {'metric store':>12s} {'OTel SDK':>9s} {'ratio':>6s}")
    for label, name, labels in CALLS:
        store = best_us(ours(metrics, name, labels), args.calls)
        sdk = best_us(theirs(instruments[name], name, labels), args.calls)
        print(f"  {label:20s} {store:12.2f} {sdk:9.2f} {store / sdk:6.2f}")
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
