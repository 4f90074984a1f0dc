"""The audit sink's metrics and readiness: rows, batch latency, outage retries, chain heads."""

from __future__ import annotations

import threading

from moderator.audit.db.store import AuditStore
from moderator.audit.sink.loop import AuditSink
from moderator.audit.sink.observe import SinkObserver
from moderator.audit.sink.wiring import run_audit_sink
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.health import Contact
from moderator.obs.telemetry import Telemetry
from tests.test_audit_sink import TOPIC, Flaky, consumer, ends, record_json, settings
from tests.test_obs_http import samples


def test_rows_latency_retries_and_chain_heads(broker: MemoryBroker, store: AuditStore) -> None:
    for i in range(6):
        broker.produce_plain(TOPIC, record_json(i), partition=i % 2)
    broker.produce_plain(TOPIC, record_json(2), partition=1)  # a redelivery
    telemetry = Telemetry()
    database, kafka = Contact(None), Contact(None)
    observer = SinkObserver(
        telemetry.metrics,
        broker=kafka,
        database=database,
        chain_heads=store.chain_heads,
        heads_every_s=0,
    )
    s = settings()
    flaky = Flaky(store, 2, lambda: None)
    sink = AuditSink(
        s, flaky, consumer(broker, s), poll_timeout_s=0, backoff_initial_s=0.01, observer=observer
    )
    sink.start()
    for _ in range(50):
        sink.step()
        if sink.committed == {tp: o for tp, o in ends(broker).items() if o}:
            break
    found = samples(telemetry)
    assert found[("moderator_audit_rows_total", (("result", "stored"),))] == 6
    assert found[("moderator_audit_rows_total", (("result", "duplicate"),))] == 1
    assert found[("moderator_audit_db_retries_total", ())] == 2
    assert found[("moderator_audit_batch_latency_seconds_count", ())] >= 1
    heads = {h.partition: h.seq for h in store.chain_heads()}
    for partition, seq in heads.items():
        key = ("moderator_audit_chain_head", (("partition", str(partition)), ("topic", TOPIC)))
        assert found[key] == seq
    assert database().ok and kafka().ok
    sink.close()
    assert not kafka().ok  # closing: no probe reaches a closed consumer


def test_an_outage_makes_the_store_unready_until_a_batch_is_stored(
    broker: MemoryBroker, store: AuditStore
) -> None:
    broker.produce_plain(TOPIC, record_json(1), partition=0)
    database = Contact(None)
    seen: list[bool] = []
    flaky = Flaky(store, 2, lambda: seen.append(database().ok))
    s = settings()
    sink = AuditSink(
        s,
        flaky,
        consumer(broker, s),
        poll_timeout_s=0,
        backoff_initial_s=0.01,
        observer=SinkObserver(database=database),
    )
    sink.start()
    sink.step()
    assert seen == [False, False]  # not ready while the inserts fail
    assert database().ok
    sink.close()


def test_writes_that_fail_while_reads_answer_keep_the_store_unready(
    broker: MemoryBroker, store: AuditStore
) -> None:
    """A full disk, a read-only file or a held lock fail writes while the readiness probe's
    read still answers: the check follows the writes."""
    broker.produce_plain(TOPIC, record_json(1), partition=0)
    telemetry = Telemetry()
    reads = Contact(store.chain_heads, retry_s=0)  # probes whenever a write has failed since
    observer = SinkObserver(telemetry.metrics, database=reads)
    seen: list[tuple[bool, str, float]] = []

    def during_outage() -> None:
        check = observer.store_check()
        gauge = samples(telemetry)[("moderator_audit_store_ready", ())]
        seen.append((check.ok, check.detail, gauge))

    flaky = Flaky(store, 2, during_outage)
    s = settings()
    sink = AuditSink(
        s, flaky, consumer(broker, s), poll_timeout_s=0, backoff_initial_s=0.01, observer=observer
    )
    assert samples(telemetry)[("moderator_audit_store_ready", ())] == 1
    sink.start()
    sink.step()
    # The first failure is seen before the sink reports it; the second after the first retry.
    assert seen[0][0] and seen[0][2] == 1
    ok, detail, gauge = seen[1]
    assert not ok and gauge == 0
    assert detail.startswith("writes failing for ") and detail.endswith(": database went away")
    assert observer.store_check().ok and reads().ok
    assert samples(telemetry)[("moderator_audit_store_ready", ())] == 1
    sink.close()


def test_run_audit_sink_adds_its_checks_to_a_given_telemetry(
    broker: MemoryBroker, store: AuditStore
) -> None:
    telemetry = Telemetry()
    telemetry.readiness.expect("engine")  # as the service beside it would
    s = settings()
    stop = threading.Event()
    checks: list[set[str]] = []

    def watch() -> None:
        checks.append(set(telemetry.readiness.evaluate()[1]))
        stop.set()

    timer = threading.Timer(0.3, watch)
    timer.start()
    run_audit_sink(s, stop, store=store, consumer=consumer(broker, s), telemetry=telemetry)
    timer.join()
    assert checks == [{"engine", "broker", "audit_store"}]
