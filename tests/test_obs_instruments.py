"""The metric store behind /metrics: what a measurement does to its series, and how a scrape
shows it."""

from __future__ import annotations

import threading
import time

import pytest
from opentelemetry.trace import NoOpTracer

from moderator.emit.records import trace_from_headers
from moderator.events.upload import UploadEvent
from moderator.events.verdict import InputCoords, Verdict
from moderator.obs.event import UNKNOWN_TENANT_LABEL, EventTelemetry
from moderator.obs.instruments import MAX_LABEL_VALUES, OTHER, MetricStore
from moderator.obs.metrics import METRICS, SECONDS, MetricSpec, no_metrics
from moderator.obs.telemetry import Telemetry
from tests.test_obs_http import samples
from tests.test_replay_report import verdict

LATENCY = "moderator_stage_latency_seconds"


def test_an_observation_counts_in_the_first_bucket_whose_bound_holds_it() -> None:
    telemetry = Telemetry()
    for value in (0.001, 0.0011, 60.0, 61.0):  # on a bound, just above it, the last, beyond
        telemetry.metrics.record(LATENCY, value, stage="decode")
    found = samples(telemetry)

    def bucket(le: str) -> float:
        return found[(f"{LATENCY}_bucket", (("le", le), ("stage", "decode")))]

    assert bucket("0.001") == 1
    assert bucket("0.0025") == 2
    assert bucket("30") == 2
    assert bucket("60") == 3
    assert bucket("+Inf") == 4
    assert found[(f"{LATENCY}_count", (("stage", "decode"),))] == 4
    assert found[(f"{LATENCY}_sum", (("stage", "decode"),))] == pytest.approx(121.0021)


def test_the_exposition_names_buckets_as_written_and_only_measured_series() -> None:
    telemetry = Telemetry()
    assert telemetry.scrape() == b""  # nothing measured yet: no series, as with the SDK before
    telemetry.metrics.record(LATENCY, 0.2, stage="fetch")
    telemetry.metrics.add("moderator_verdicts_total", tenant="t", decision="allow", category="none")
    telemetry.metrics.set("moderator_inflight", 3)
    text = telemetry.scrape().decode()
    assert f'{LATENCY}_bucket{{le="1",stage="fetch"}} 1.0' in text
    assert 'le="1.0"' not in text and f"{LATENCY}_created" not in text
    assert 'moderator_verdicts_total{category="none",decision="allow",tenant="t"} 1.0' in text
    assert "moderator_inflight 3.0" in text
    assert "moderator_dlq_total" not in text
    assert text.index("# HELP moderator_verdicts_total") < text.index(
        f"# HELP {LATENCY}"
    )  # METRICS order


def test_a_gauge_keeps_its_last_value_per_series_and_counters_add() -> None:
    telemetry = Telemetry()
    m = telemetry.metrics
    m.set("moderator_consumer_lag", 5, topic="u", partition="0")
    m.set("moderator_consumer_lag", 2, topic="u", partition="0")
    m.set("moderator_consumer_lag", 7, topic="u", partition="1")
    m.add("moderator_transactions_total", 2, result="commit")
    m.add("moderator_transactions_total", result="commit")
    found = samples(telemetry)
    assert found[("moderator_consumer_lag", (("partition", "0"), ("topic", "u")))] == 2
    assert found[("moderator_consumer_lag", (("partition", "1"), ("topic", "u")))] == 7
    assert found[("moderator_transactions_total", (("result", "commit"),))] == 3


def test_a_measurement_takes_exactly_the_labels_of_its_spec() -> None:
    m = Telemetry().metrics
    with pytest.raises(KeyError, match="takes the labels"):
        m.add("moderator_verdicts_total", tenant="t")
    with pytest.raises(KeyError, match="takes the labels"):
        m.record(LATENCY, 1.0, stage="fetch", tenant="t")
    with pytest.raises(KeyError, match="stage"):
        m.record(LATENCY, 1.0, phase="fetch")
    with pytest.raises(KeyError, match="not a counter"):
        m.add(LATENCY)
    with pytest.raises(KeyError, match="not a histogram"):
        no_metrics().record("moderator_nothing_seconds", 1.0)  # checked even when not kept


def test_a_counter_cannot_count_down() -> None:
    with pytest.raises(ValueError, match="cannot count down"):
        Telemetry().metrics.add("moderator_coalesced_total", -1)


def test_measurements_from_many_threads_are_all_kept() -> None:
    spec = MetricSpec("t_seconds", "histogram", ("k",), "test", "s", SECONDS)
    counter = MetricSpec("t_total", "counter", ("k",), "test")
    store = MetricStore((spec, counter))
    threads, per_thread = 8, 5_000

    def work(i: int) -> None:
        for n in range(per_thread):
            store.observe("t_seconds", (str(i % 2),), n / per_thread)
            store.add("t_total", (str(i % 2),), 1)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    families = {f.name: f for f in store.collect()}
    counts = [s.value for s in families["t_seconds"].samples if s.name == "t_seconds_count"]
    assert counts == [threads * per_thread / 2] * 2
    totals = [s.value for s in families["t"].samples if s.name == "t_total"]
    assert totals == [threads * per_thread / 2] * 2


def test_every_histogram_of_the_table_has_buckets() -> None:
    for spec in METRICS:
        if spec.kind == "histogram":
            assert spec.buckets and list(spec.buckets) == sorted(spec.buckets), spec.name


def test_a_label_that_events_write_keeps_a_bounded_number_of_values() -> None:
    # Anyone who can produce to the uploads topic writes tenant ids: each would be a new series.
    telemetry = Telemetry()
    for n in range(MAX_LABEL_VALUES + 50):
        telemetry.metrics.add(
            "moderator_verdicts_total", tenant=f"t{n}", decision="allow", category="none"
        )
    telemetry.metrics.add(
        "moderator_verdicts_total", tenant="t0", decision="allow", category="none"
    )
    found = samples(telemetry)
    tenants = {dict(labels)["tenant"]: v for (name, labels), v in found.items()}
    assert len(tenants) == MAX_LABEL_VALUES + 1
    assert tenants[OTHER] == 50
    assert tenants["t0"] == 2  # a value kept before the bound stays its own series


def test_unknown_tenant_verdicts_share_one_series() -> None:
    telemetry = Telemetry()
    for n in range(3):
        event = UploadEvent.model_validate(
            {
                "event_id": f"e-{n}",
                "tenant_id": f"stranger-{n}",
                "object": {"bucket": "u", "key": "k"},
            }
        )
        obs = EventTelemetry(
            NoOpTracer(),
            telemetry.metrics,
            trace_from_headers(None, f"e-{n}"),
            event,
            InputCoords(topic="uploads", partition=0, offset=n),
            time.monotonic(),
        )
        doc = verdict(f"e-{n}", f"stranger-{n}", "default", "review", "v1", error="unknown_tenant")
        obs.end(Verdict.model_validate(doc), "error")
    found = samples(telemetry)
    tenants = {dict(labels)["tenant"] for (name, labels) in found if "verdicts" in name}
    assert tenants == {UNKNOWN_TENANT_LABEL}
