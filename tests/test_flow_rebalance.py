"""Backpressure across a rebalance: partitions assigned while paused stay paused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import structlog

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from tests.harness import (
    Instance,
    png,
    seed_uploads,
    settings_for,
    verdict_ids,
    wait_for,
    write_policies,
)


def test_partitions_assigned_while_paused_are_paused(tmp_path: Path) -> None:
    broker, store = MemoryBroker(default_partitions=4), InMemoryObjectStore()
    seed_uploads(broker, store, 40)
    for p in range(4):  # every partition has work, whichever member ends up with it
        for i in range(10):
            key = f"acme/p{p}-{i}.png"
            store.put("uploads", key, png(1000 + 10 * p + i))
            event = {
                "event_id": f"p{p}-{i}",
                "tenant_id": "acme",
                "object": {"bucket": "uploads", "key": key},
            }
            broker.produce_plain("uploads", json.dumps(event).encode(), partition=p)
    slow = {
        "engine.fake.latency_ms": 3000,  # the first batch keeps A above its high-water mark
        "flow.high_in_flight": 2,
        "flow.low_in_flight": 0,
        "flow.poll_batch": 2,
        "flow.drain_grace_s": 0,
    }
    policies = write_policies(tmp_path)
    a = Instance(broker, store, settings_for(policies, instance_id="a", **slow)).start()
    wait_for(lambda: a.loop.stats.pauses == 1, what="A paused")
    b = Instance(broker, store, settings_for(policies, instance_id="b", **slow)).start()
    wait_for(lambda: len(a.consumer.assignment()) == 2, what="A gives partitions to B")
    before = a.loop.stats.messages
    b.stop.set()  # B leaves: A gets its partitions back while it is still paused
    wait_for(lambda: len(a.consumer.assignment()) == 4, what="A takes the partitions back")
    time.sleep(0.5)
    assert a.loop.paused and a.loop.stats.pauses == 1, "the slow batch ended too early for this"
    assert a.loop.stats.messages == before  # nothing read from the newly assigned partitions
    a.shutdown()
    b.shutdown()


def test_backpressure_does_not_wait_for_the_commit_interval(tmp_path: Path) -> None:
    """Completed messages count as in flight until committed: the loop must checkpoint before
    they fill the high-water mark, not only when commit_interval_ms or commit_max_events pass."""
    broker, store = MemoryBroker(default_partitions=4), InMemoryObjectStore()
    ids, _ = seed_uploads(broker, store, 300)
    settings = settings_for(
        write_policies(tmp_path),
        **{
            "flow.high_in_flight": 16,
            "flow.low_in_flight": 8,
            "kafka.commit_interval_ms": 1000,  # once per second: 300 events need 19 cycles
            "kafka.commit_max_events": 100_000,
        },
    )
    inst = Instance(broker, store, settings).start()
    started = time.monotonic()
    wait_for(lambda: len(verdict_ids(broker)) == len(ids), timeout=30, what="all verdicts")
    elapsed = time.monotonic() - started
    inst.shutdown()
    assert inst.error is None and inst.loop.stats.pauses > 0
    assert elapsed < 8, f"{elapsed:.1f}s: intake waited for the commit interval while paused"


@pytest.mark.usefixtures("info_logs")
def test_a_pause_held_only_by_uncommitted_completions_commits_at_once(tmp_path: Path) -> None:
    """Paused at 16 in flight with a low-water mark of 12: once the first batch of 4 is done,
    12 events are left and only the 4 completed, uncommitted messages keep intake paused. The
    loop commits them then and there and resumes; before, it waited for the next commit (8
    completions or the interval), with the pipeline emptying meanwhile."""
    broker, store = MemoryBroker(default_partitions=1), InMemoryObjectStore()
    ids, _ = seed_uploads(broker, store, 40)
    settings = settings_for(
        write_policies(tmp_path),
        **{
            "flow.high_in_flight": 16,
            "flow.low_in_flight": 12,
            "flow.poll_batch": 16,
            "fetch.concurrency": 1,  # in offset order: the first batch can be committed
            "engine.batch_size": 4,
            "engine.max_wait_ms": 1000,  # batches of exactly 4
            "engine.fake.latency_ms": 300,
            "kafka.commit_interval_ms": 2000,
            "kafka.commit_max_events": 100_000,
        },
    )
    with structlog.testing.capture_logs() as lines:
        inst = Instance(broker, store, settings).start()
        wait_for(lambda: len(verdict_ids(broker)) == len(ids), timeout=30, what="all verdicts")
        inst.shutdown()
    assert inst.error is None
    resumed = [line["in_flight"] for line in lines if line["event"] == "resumed"]
    assert resumed and resumed[0] == 12, f"in flight at each resume: {resumed}"
