"""The service's metrics: one table of instruments, and the object components record through.

`METRICS` is the single definition of every metric: its Prometheus name as scraped from
`/metrics` (counters end in `_total`, histograms of seconds in `_seconds`), its kind, unit,
labels and meaning. docs/observability.md lists the same table (a test holds them equal), and
the dashboard and alert rules in deploy/ may use only these names. Components record through a
`Metrics` object into a `MetricStore` (moderator.obs.instruments); without one it records
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["counter", "histogram", "gauge"]

# Histogram buckets: seconds for latencies (sub-millisecond to a minute), items for batch sizes.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as scraped; the instrument's own name drops `_total` / `_seconds`
    kind: Kind
    labels: tuple[str, ...]
    help: str
    unit: str = "1"
    buckets: tuple[float, ...] = ()
    bounded: str | None = None  # a label whose values come from events: capped (instruments)

    @property
    def instrument(self) -> str:
        for suffix in ("_total", "_seconds"):
            if self.name.endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "moderator_events_total",
        "counter",
        ("outcome",),
        "events taken from uploads, by outcome: verdict, error_verdict, dlq, skipped",
    ),
    MetricSpec(
        "moderator_verdicts_total",
        "counter",
        ("tenant", "decision", "category"),
        "verdicts published, by tenant (the first 1000 seen, then _other; _unknown for "
        "unknown_tenant errors), decision and category code (none without an assessment)",
        bounded="tenant",
    ),
    MetricSpec("moderator_dlq_total", "counter", ("code",), "records dead-lettered, by error code"),
    MetricSpec(
        "moderator_stage_latency_seconds",
        "histogram",
        ("stage",),
        "time per stage: fetch, decode, queue, infer, decide, and total (event taken to verdict "
        "ready)",
        "s",
        SECONDS,
    ),
    MetricSpec(
        "moderator_upload_to_verdict_seconds",
        "histogram",
        (),
        "from the upload's uploaded_at (or the message timestamp) to its verdict being committed",
        "s",
        SECONDS,
    ),
    MetricSpec(
        "moderator_engine_batch_size", "histogram", (), "images per engine call", "1", SIZES
    ),
    MetricSpec(
        "moderator_object_store_ready",
        "gauge",
        (),
        "0 while every object store read has failed for more than 60 s (reads then wait), else 1",
    ),
    MetricSpec(
        "moderator_engine_busy_ratio",
        "gauge",
        (),
        "fraction of the last interval the engine workers spent in engine calls",
    ),
    MetricSpec(
        "moderator_engine_ready", "gauge", (), "1 when the engine has loaded and answered, else 0"
    ),
    MetricSpec(
        "moderator_cache_requests_total",
        "counter",
        ("result",),
        "verdict cache lookups, by result: hit, miss",
    ),
    MetricSpec(
        "moderator_coalesced_total",
        "counter",
        (),
        "events answered by an engine call made for another event in flight with the same image, "
        "model input and model (no engine call of their own)",
    ),
    MetricSpec(
        "moderator_inflight",
        "gauge",
        (),
        "events in progress or held uncommitted (what the flow gate bounds)",
    ),
    MetricSpec(
        "moderator_buffered_bytes", "gauge", (), "object and frame bytes held by events in progress"
    ),
    MetricSpec("moderator_paused", "gauge", (), "1 while intake is paused by backpressure"),
    MetricSpec(
        "moderator_consumer_lag",
        "gauge",
        ("topic", "partition"),
        "messages between the committed offset and the end of each assigned partition",
    ),
    MetricSpec(
        "moderator_transactions_total",
        "counter",
        ("result",),
        "checkpoints, by result: commit, abort",
    ),
    MetricSpec(
        "moderator_policy_info",
        "gauge",
        ("tenant", "version"),
        "1 per tenant and the version of its default surface now in force",
    ),
    MetricSpec(
        "moderator_policy_stale",
        "gauge",
        ("tenant",),
        "1 while a tenant's file on disk fails to load and the last good version stays in force",
    ),
    MetricSpec(
        "moderator_audit_rows_total",
        "counter",
        ("result",),
        "audit records taken by the sink, by result: stored, duplicate, conflict_tenant, "
        "conflict_object, conflict_record",
    ),
    MetricSpec(
        "moderator_audit_expired_offsets_total",
        "counter",
        ("topic", "partition"),
        "offsets of the audit topic the brokers deleted (retention) before the sink group read "
        "them: audit records never stored, transaction markers among them",
    ),
    MetricSpec(
        "moderator_audit_batch_latency_seconds",
        "histogram",
        (),
        "time to store one batch of audit records",
        "s",
        SECONDS,
    ),
    MetricSpec(
        "moderator_audit_db_retries_total",
        "counter",
        (),
        "audit store writes retried during a database outage",
    ),
    MetricSpec(
        "moderator_audit_store_ready",
        "gauge",
        (),
        "0 from a failed audit store write until a batch is stored again, else 1",
    ),
    MetricSpec(
        "moderator_audit_chain_head",
        "gauge",
        ("topic", "partition"),
        "sequence number of each hash chain's head",
    ),
)
BY_NAME = {spec.name: spec for spec in METRICS}


class Store(Protocol):
    """Where measurements go, by scraped name and label values (moderator.obs.instruments)."""

    def add(self, name: str, key: tuple[str, ...], amount: float) -> None: ...

    def observe(self, name: str, key: tuple[str, ...], value: float) -> None: ...

    def set(self, name: str, key: tuple[str, ...], value: float) -> None: ...


class Metrics:
    """Records `METRICS` by scraped name, with exactly the labels the metric's spec names."""

    def __init__(self, store: Store | None) -> None:
        self._store = store

    def add(self, name: str, amount: float = 1, **labels: str) -> None:
        """Count on a counter."""
        key = _key(_checked(name, "counter"), labels)
        if self._store is not None:
            self._store.add(name, key, amount)

    def record(self, name: str, value: float, **labels: str) -> None:
        """A histogram observation."""
        key = _key(_checked(name, "histogram"), labels)
        if self._store is not None:
            self._store.observe(name, key, value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge's current value."""
        key = _key(_checked(name, "gauge"), labels)
        if self._store is not None:
            self._store.set(name, key, value)


def no_metrics() -> Metrics:
    """Instruments that record nothing (tests, commands that publish no metrics)."""
    return Metrics(None)


def _checked(name: str, kind: Kind) -> MetricSpec:
    spec = BY_NAME.get(name)
    if spec is None or spec.kind != kind:
        raise KeyError(f"{name} is not a {kind} of moderator.obs.metrics.METRICS")
    return spec


def _key(spec: MetricSpec, labels: dict[str, str]) -> tuple[str, ...]:
    """The label values in the spec's order; the labels must be exactly the spec's."""
    if len(labels) != len(spec.labels):
        raise KeyError(f"{spec.name} takes the labels {spec.labels}, not {tuple(labels)}")
    return tuple([str(labels[name]) for name in spec.labels])
