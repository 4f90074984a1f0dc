"""The consume loop's metrics on the in-memory broker, the observer's bookkeeping, consumer lag
from cached watermarks, and the policy gauges across reloads."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition

from moderator.emit.records import OutRecord, Trace
from moderator.events.upload import UploadEvent
from moderator.events.verdict import InputCoords
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.kafka import consumer_config, producer_config
from moderator.ingest.lag import assigned_lag
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.obs.health import Contact
from moderator.obs.intake import IntakeObserver
from moderator.obs.telemetry import Telemetry
from moderator.pipeline.job import Job
from moderator.policy.registry import PolicyRegistry
from moderator.service import build_pipeline
from moderator.settings import TenancySettings
from tests.harness import BUCKET, TENANTS, png, settings_for, wait_for, write_policies
from tests.test_obs_http import samples


def _seed(broker: MemoryBroker, store: InMemoryObjectStore) -> dict[str, int]:
    """Judged, missing-object, malformed and skipped inputs; the outcomes they should count."""
    uploaded = datetime.now(UTC) - timedelta(seconds=2)  # now, not at import: tests run later
    for i in range(12):
        tenant = TENANTS[i % 3]
        key = f"{tenant}/img-{i}.png"
        if i != 5:  # ev-5's object is missing: an error verdict
            store.put(BUCKET, key, png(i))
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
            "uploaded_at": uploaded.isoformat(),
        }
        broker.produce_plain("uploads", json.dumps(event).encode(), key=tenant.encode())
    for _ in range(2):
        broker.produce_plain("uploads", b'{"event_id": ', key=b"bad")
    store.put(BUCKET, "acme/notified.png", png(99))
    records = [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": k}}}
        for k in ("acme/notified.png",)
    ] + [
        {
            "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": "x"}},
        }
    ]
    broker.produce_plain("uploads", json.dumps({"Records": records}).encode())
    # 11 judged uploads and the notified one; ev-5; two malformed; the deletion
    return {"verdict": 12, "error_verdict": 1, "dlq": 2, "skipped": 1, "messages": 15}


def test_a_run_records_outcomes_checkpoints_latency_and_gauges(tmp_path: Path) -> None:
    broker = MemoryBroker(default_partitions=2)
    store = InMemoryObjectStore()
    expected = _seed(broker, store)
    settings = settings_for(write_policies(tmp_path / "policies"))
    telemetry = Telemetry()
    pipeline = build_pipeline(settings, store=store, metrics=telemetry.metrics)
    contact = Contact(None)
    loop = IngestLoop(
        settings=settings,
        consumer=broker.consumer(consumer_config(settings)),
        producer=broker.producer(producer_config(settings)),
        processor=pipeline.processor,
        metrics=telemetry.metrics,
        broker=contact,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: loop.stats.committed_messages == expected["messages"], what="commits")
    finally:
        stop.set()
        thread.join(20)
        pipeline.close()
    found = samples(telemetry)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    verdicts = expected["verdict"] + expected["error_verdict"]
    assert value("moderator_events_total", outcome="verdict") == expected["verdict"]
    assert value("moderator_events_total", outcome="error_verdict") == expected["error_verdict"]
    assert value("moderator_events_total", outcome="dlq") == expected["dlq"]
    assert value("moderator_events_total", outcome="skipped") == expected["skipped"]
    assert value("moderator_dlq_total", code="malformed_event") == expected["dlq"]
    assert value("moderator_transactions_total", result="commit") == loop.stats.checkpoints
    assert value("moderator_transactions_total", result="abort") == 0
    # uploads carry uploaded_at (2 s ago); the notified object has the message's timestamp
    assert value("moderator_upload_to_verdict_seconds_count") == verdicts
    assert value("moderator_upload_to_verdict_seconds_bucket", le="60") == verdicts
    assert value("moderator_upload_to_verdict_seconds_bucket", le="1") <= 1
    # every judged image went through the engine once
    assert value("moderator_engine_batch_size_sum") == expected["verdict"]
    assert value("moderator_engine_batch_size_count") >= 1
    assert ("moderator_inflight", ()) in found and ("moderator_paused", ()) in found
    assert ("moderator_buffered_bytes", ()) in found
    for tenant in (*TENANTS, "default"):
        versions = [k for k, v in found.items() if k[0] == "moderator_policy_info" and v == 1]
        assert any(("tenant", tenant) in labels for _, labels in versions), tenant
        assert value("moderator_policy_stale", tenant=tenant) == 0
    assert contact().ok  # the loop told the broker check of its answers


def _job(offset: int, uploaded_at: datetime | None, timestamp_ms: int | None) -> Job:
    event = UploadEvent.model_validate(
        {
            "event_id": f"e-{offset}",
            "tenant_id": "acme",
            "object": {"bucket": "b", "key": "acme/k"},
            "uploaded_at": uploaded_at,
        }
    )
    coords = InputCoords(topic="u", partition=0, offset=offset, timestamp_ms=timestamp_ms)
    return Job(event, coords, Trace("1" * 32, None), 0.0)


def test_observer_holds_upload_times_until_commit_and_drops_them_on_rewind() -> None:
    telemetry = Telemetry()
    wall = [1000.0]
    obs = IntakeObserver("verdicts", telemetry.metrics, wall=lambda: wall[0])
    tp = ("u", 0)
    obs.accepted(tp, 10, [_job(10, datetime.fromtimestamp(990, UTC), 5)], 0)
    obs.accepted(tp, 11, [_job(11, None, 995_000), _job(11, None, None)], 0)
    obs.accepted(tp, 12, [_job(12, None, 999_000)], 0)
    obs.committed({tp: 12}, 0.25)  # offsets 10 and 11
    found = samples(telemetry)
    assert found[("moderator_upload_to_verdict_seconds_count", ())] == 2  # one time unknown
    assert found[("moderator_upload_to_verdict_seconds_sum", ())] == 15.0
    obs.aborted(0.5)
    obs.accepted(tp, 12, [_job(12, None, 999_500)], 0)  # rewound: 12 comes again
    wall[0] = 1001.0
    obs.committed({tp: 13}, 0.25)
    found = samples(telemetry)
    assert found[("moderator_upload_to_verdict_seconds_count", ())] == 3
    assert found[("moderator_upload_to_verdict_seconds_sum", ())] == 16.5
    assert found[("moderator_transactions_total", (("result", "abort"),))] == 1
    assert found[("moderator_transactions_total", (("result", "commit"),))] == 2
    publish = (("stage", "publish"),)  # every checkpoint, aborted or not, is a publish stage
    assert found[("moderator_stage_latency_seconds_count", publish)] == 3
    assert found[("moderator_stage_latency_seconds_sum", publish)] == 1.0


def test_observer_outcomes_come_from_the_verdict_record() -> None:
    telemetry = Telemetry()
    obs = IntakeObserver("verdicts", telemetry.metrics)
    ok = b'{"event_id":"e","error":null,"object":{"key":"\\"error\\":{"}}'
    failed = b'{"event_id":"e","error":{"code":"engine_error","message":"x"}}'
    obs.completed([OutRecord("verdicts", None, ok, []), OutRecord("audit", None, failed, [])])
    obs.completed([OutRecord("audit", None, ok, []), OutRecord("verdicts", None, failed, [])])
    obs.completed([OutRecord("replay", None, ok, [])])  # no verdict record: not counted
    found = samples(telemetry)
    assert found[("moderator_events_total", (("outcome", "verdict"),))] == 1
    assert found[("moderator_events_total", (("outcome", "error_verdict"),))] == 1


def test_gauges_refresh_at_most_every_interval_and_released_partitions_read_zero() -> None:
    telemetry = Telemetry()
    now = [0.0]
    obs = IntakeObserver(
        "v", telemetry.metrics, gauges_every_s=1, lag_every_s=5, clock=lambda: now[0]
    )
    lags: list[int] = []

    def lag() -> dict[tuple[str, int], int]:
        lags.append(1)
        return {("u", 0): 40, ("u", 1): 2}

    obs.tick(3, True, 1024, lag)
    now[0] = 0.5
    obs.tick(9, False, 0, lag)  # too soon: unchanged
    found = samples(telemetry)
    assert found[("moderator_inflight", ())] == 3 and found[("moderator_paused", ())] == 1
    assert found[("moderator_buffered_bytes", ())] == 1024
    assert found[("moderator_consumer_lag", (("partition", "0"), ("topic", "u")))] == 40
    now[0] = 1.0
    obs.tick(9, False, 0, lag)
    assert samples(telemetry)[("moderator_inflight", ())] == 9 and lags == [1]
    obs.released([("u", 0)])
    assert samples(telemetry)[("moderator_consumer_lag", (("partition", "0"), ("topic", "u")))] == 0


class _Consumer:
    """Cached watermarks and positions as librdkafka reports them."""

    def __init__(self, ends: dict[int, int], positions: dict[int, int]) -> None:
        self.ends = ends
        self.positions = positions

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> Any:
        assert cached, "the loop never asks the broker"
        return (0, self.ends.get(tp.partition, OFFSET_INVALID))

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(t.topic, t.partition, self.positions.get(t.partition, OFFSET_INVALID))
            for t in tps
        ]


def test_assigned_lag_from_cached_watermarks() -> None:
    consumer = _Consumer(ends={0: 100, 1: 50, 2: 7}, positions={1: 45})
    assigned = [("u", 0), ("u", 1), ("u", 2), ("u", 3)]
    # 0: committed 60; 1: nothing committed, position 45; 2: nothing known; 3: no end known
    assert assigned_lag(consumer, assigned, {("u", 0): 60, ("u", 3): 1}) == {
        ("u", 0): 40,
        ("u", 1): 5,
    }
    assert assigned_lag(object(), assigned, {("u", 0): 1}) == {}  # no watermarks: no lag


def test_policy_gauges_follow_reloads(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "p")
    telemetry = Telemetry()
    registry = PolicyRegistry(policies, TenancySettings(), metrics=telemetry.metrics)

    def info(tenant: str) -> dict[str, float]:
        return {
            dict(labels)["version"]: v
            for (name, labels), v in samples(telemetry).items()
            if name == "moderator_policy_info" and dict(labels)["tenant"] == tenant
        }

    first = registry.status()["acme"].versions["default"]
    assert info("acme") == {first: 1}
    (policies / "acme.yaml").write_text("on_error: block\n")
    assert registry.reload()
    second = registry.status()["acme"].versions["default"]
    assert info("acme") == {first: 0, second: 1}
    (policies / "acme.yaml").write_text("on_error: [nope\n")
    registry.reload()
    assert info("acme") == {first: 0, second: 1}  # the last good version stays in force
    stale = ("moderator_policy_stale", (("tenant", "acme"),))
    assert samples(telemetry)[stale] == 1
    (policies / "acme.yaml").unlink()
    registry.reload()
    assert info("acme") == {first: 0, second: 0}
    assert samples(telemetry)[stale] == 0


def test_a_new_policy_file_that_fails_sets_its_stale_gauge(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "p")
    telemetry = Telemetry()
    registry = PolicyRegistry(policies, TenancySettings(), metrics=telemetry.metrics)
    (policies / "newbie.yaml").write_text("on_error: [nope\n")
    registry.reload()
    assert samples(telemetry)[("moderator_policy_stale", (("tenant", "newbie"),))] == 1
    assert not [k for k in samples(telemetry) if ("tenant", "newbie") in k[1] and "info" in k[0]]


@pytest.mark.usefixtures("info_logs")
def test_checkpoints_aborting_in_a_row_make_the_process_not_ready() -> None:
    from structlog.testing import capture_logs

    from moderator.obs.intake import ABORTS_NOT_READY

    obs = IntakeObserver("verdicts")
    with capture_logs() as logs:
        for _ in range(ABORTS_NOT_READY - 1):
            obs.aborted(0.1, "Message size too large")
        assert obs.checkpoints().ok
        obs.aborted(0.1, "Message size too large")
        check = obs.checkpoints()
        assert not check.ok
        assert check.detail == "the last 5 checkpoints aborted: Message size too large"
        obs.committed({("uploads", 0): 10}, 0.1)
        assert obs.checkpoints().ok
    events = [(line["event"], line["log_level"]) for line in logs]
    assert events == [("checkpoints_failing", "error"), ("checkpoints_committing_again", "info")]


def test_counters_are_scraped_at_zero_before_their_first_event() -> None:
    # A series born at its first count (3 dead letters at once) shows no increase to rate():
    # the first burst would never fire an alert.
    telemetry = Telemetry()
    IntakeObserver("moderation.verdicts", telemetry.metrics)
    found = samples(telemetry)
    for outcome in ("verdict", "error_verdict", "dlq", "skipped"):
        assert found[("moderator_events_total", (("outcome", outcome),))] == 0
    assert found[("moderator_dlq_total", (("code", "malformed_event"),))] == 0
    assert found[("moderator_transactions_total", (("result", "abort"),))] == 0


def test_the_processors_counters_are_scraped_at_zero_before_their_first_event(
    tmp_path: Path,
) -> None:
    telemetry = Telemetry()
    settings = settings_for(write_policies(tmp_path / "policies"))
    pipeline = build_pipeline(settings, store=InMemoryObjectStore(), metrics=telemetry.metrics)
    try:
        found = samples(telemetry)
    finally:
        pipeline.close()
    assert found[("moderator_cache_requests_total", (("result", "hit"),))] == 0
    assert found[("moderator_cache_requests_total", (("result", "miss"),))] == 0
    assert found[("moderator_coalesced_total", ())] == 0
