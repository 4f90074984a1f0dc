"""A producer call that never returns (librdkafka 5456/5511: send_offsets_to_transaction past its
timeout) no longer stops the loop: the checkpoint gives up on it, the loop replaces the producer
(whose init_transactions fences the stuck one) and processes the checkpoint's events again,
still exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from moderator.emit.records import OutRecord
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.checkpoint import FatalKafkaError, commit_checkpoint, replace_producer
from moderator.ingest.loop import IngestLoop
from moderator.ingest.memory.broker import MemoryBroker
from moderator.ingest.stuck import ProducerStuck, bounded
from moderator.ingest.tracker import Ready
from tests.eos_scenarios import (
    Instance,
    MemoryWorld,
    Names,
    eos_settings,
    exactly_once_problems,
    finished,
    outcome,
    progress,
    seed,
    wait_for,
)
from tests.harness import write_policies


class HangingProducerDouble:
    """A test double of a producer whose `nth` send_offsets_to_transaction call blocks, whatever
    timeout it is given, until `release` is set; then it goes on to the real producer.
    Everything else passes straight through."""

    def __init__(self, inner: Any, nth: int = 1) -> None:
        self.inner, self._left = inner, nth
        self.release = threading.Event()
        self.hung = threading.Event()
        self.after_release: BaseException | None = None
        self.aborts = 0

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float = -1) -> None:
        self._left -= 1
        if self._left == 0:
            self.hung.set()
            self.release.wait()
            try:
                self.inner.send_offsets_to_transaction(offsets, metadata, timeout)
            except KafkaException as exc:
                self.after_release = exc
                raise
            return
        self.inner.send_offsets_to_transaction(offsets, metadata, timeout)

    def abort_transaction(self, timeout: float = -1) -> None:
        self.aborts += 1
        self.inner.abort_transaction(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_bounded_returns_the_result_raises_the_error_and_gives_up_on_a_call_that_hangs() -> None:
    assert bounded(lambda: 7, 1, "seven") == 7
    with pytest.raises(ValueError, match="inside"):
        bounded(lambda: (_ for _ in ()).throw(ValueError("inside")), 1, "raising")
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(ProducerStuck, match="kafka: waiting did not return within 0s"):
        bounded(never.wait, 0.2, "waiting")
    assert 0.2 <= time.monotonic() - started < 2
    never.set()  # the helper thread ends


def test_a_stuck_offsets_call_raises_producer_stuck_without_an_abort() -> None:
    broker = MemoryBroker(default_partitions=1)
    broker.create_topic("uploads", 1)
    inner = broker.producer({"transactional.id": "t-1"})
    inner.init_transactions(5)
    producer = HangingProducerDouble(inner)
    consumer = broker.consumer({"group.id": "g"})
    record = OutRecord("v", b"k", b"x", [])
    ready = {("uploads", 0): Ready(next_offset=1, count=1, outputs=[record])}
    started = time.monotonic()
    with pytest.raises(ProducerStuck, match="send_offsets_to_transaction did not return"):
        commit_checkpoint(producer, consumer, ready, exactly_once=True, timeout_s=0.3)
    # given what was left of 0.3 s, waited a third of it more
    assert 0.3 <= time.monotonic() - started < 2
    assert producer.aborts == 0  # the stuck producer is not touched again
    # its successor fences it: once the stuck call goes on, it cannot commit anything
    renew = lambda: broker.producer({"transactional.id": "t-1"})  # noqa: E731
    successor = replace_producer(renew, ProducerStuck("x"), 5)
    producer.release.set()
    wait_for(lambda: producer.after_release is not None, 5, "the released call to fail")
    assert "fenced" in str(producer.after_release)
    successor.begin_transaction()  # the successor works
    successor.commit_transaction(5)


def test_without_a_way_to_renew_a_stuck_producer_is_fatal() -> None:
    stuck = ProducerStuck("kafka: commit_transaction did not return within 9s")
    with pytest.raises(FatalKafkaError, match=r"did not return.*no way to replace the producer"):
        replace_producer(None, stuck, 1)


def test_the_loop_replaces_a_producer_stuck_in_send_offsets_and_stays_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the loop's checkpoint timeout is at least 10 s; a test waits half a second instead
    monkeypatch.setattr(IngestLoop, "_timeout", property(lambda _self: 0.5))
    world, store, names = MemoryWorld(), InMemoryObjectStore(), Names.unique("stuck")
    world.create_topics(names.topics)
    ids, malformed = seed(world, store, names, 120, malformed_every=11)
    settings = eos_settings(
        world,
        names,
        write_policies(tmp_path),
        **{"engine.fake.latency_ms": 5, "engine.batch_size": 4},
    )
    instance = Instance(world, store, settings)
    hanging = HangingProducerDouble(instance.loop.producer, nth=2)
    instance.loop.producer = hanging
    instance.start()
    try:
        wait_for(hanging.hung.is_set, 30, "the second checkpoint to hang")
        stuck_at = progress(world, names)
        wait_for(lambda: finished(world, names), 60, "every offset committed after the hang")
    finally:
        hanging.release.set()
    instance.shutdown()
    assert instance.error is None, instance.error
    assert exactly_once_problems(outcome(world, names), ids, malformed) == []
    assert stuck_at < len(ids) + malformed  # the hang came before the end of the work
    assert instance.loop.stats.producers_replaced == 1
    assert instance.loop.producer is not hanging
    assert hanging.aborts == 0
    wait_for(lambda: hanging.after_release is not None, 5, "the released call to fail")
    assert "fenced" in str(hanging.after_release)
