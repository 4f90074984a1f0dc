"""The checkpoint protocol against the in-memory broker that implements the real rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.checkpoint import FENCED_HINT, FatalKafkaError, client_failure
from moderator.ingest.memory.broker import MemoryBroker
from tests.eos_scenarios import (
    CRASH_POINTS,
    MemoryWorld,
    break_checkpoint,
    crash_then_restart,
    fenced_zombie,
    rebalance,
)
from tests.harness import (
    Instance,
    audit_ids,
    seed_uploads,
    settings_for,
    verdict_ids,
    wait_for,
    write_policies,
)


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this point runs."""


@pytest.fixture
def world(tmp_path: Path) -> tuple[MemoryBroker, InMemoryObjectStore, Path]:
    return MemoryBroker(default_partitions=4), InMemoryObjectStore(), write_policies(tmp_path)


def _all_done(broker: MemoryBroker, ids: set[str], dlq: int) -> bool:
    seen = verdict_ids(broker)
    return set(seen) >= ids and len(broker.records("moderation.dlq")) >= dlq


def _assert_exactly_once(broker: MemoryBroker, ids: set[str], malformed: int) -> None:
    verdicts = verdict_ids(broker)
    assert set(verdicts) == ids
    assert max(verdicts.values()) == 1, [k for k, v in verdicts.items() if v > 1][:5]
    audits = audit_ids(broker)
    assert audits == verdicts
    assert len(broker.records("moderation.dlq")) == malformed
    # nothing aborted or open is visible, but the aborted attempts did write records
    assert len(broker.records("moderation.verdicts", read_committed=True)) == len(ids)


def test_happy_path_exactly_once(world: tuple[MemoryBroker, InMemoryObjectStore, Path]) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 120, malformed_every=10)
    inst = Instance(broker, store, settings_for(policies)).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    inst.shutdown()
    assert inst.error is None
    _assert_exactly_once(broker, ids, malformed)
    for p in range(4):
        end = broker.end_offset("uploads", p)
        assert broker.committed_offset("g", "uploads", p) == (end if end else None)


@pytest.mark.parametrize(
    "point",
    [
        "begin_transaction",
        "produce",  # before produce
        "send_offsets_to_transaction",  # between produce and offsets
        "commit_transaction",  # before commit
        "after_commit_transaction",  # after the commit took effect
    ],
)
@pytest.mark.parametrize("nth", [1, 3])
def test_crash_at_each_checkpoint_step_then_restart(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path], point: str, nth: int
) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 160, malformed_every=9)
    settings = settings_for(
        policies,
        **{"kafka.commit_max_events": 10, "kafka.commit_interval_ms": 300, "flow.poll_batch": 4},
    )
    first = Instance(broker, store, settings)
    broker.inject(point, SimulatedCrash(point), skip=nth - 1)  # the nth call crashes the process
    first.start()
    first.thread.join(30)
    assert isinstance(first.error, SimulatedCrash), first.error
    if point != "after_commit_transaction":  # that crash may follow the final commit
        assert len(verdict_ids(broker)) < len(ids)  # it died with work left
    broker.evict(first.consumer)  # its session times out; the restarted process takes over
    second = Instance(broker, store, settings).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="verdicts after restart")
    second.shutdown()
    assert second.error is None
    _assert_exactly_once(broker, ids, malformed)


def test_abortable_error_rewinds_and_reprocesses(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 60, malformed_every=7)
    err = KafkaException(KafkaError(KafkaError._STATE, "injected", txn_requires_abort=True))
    broker.inject("commit_transaction", err, times=2)
    inst = Instance(broker, store, settings_for(policies)).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    inst.shutdown()
    assert inst.error is None
    assert inst.loop.stats.aborted == 2
    _assert_exactly_once(broker, ids, malformed)
    # The aborted attempts wrote records that stay hidden. Which topics they reached depends on
    # what the first checkpoints held (on a busy machine, only the malformed events' DLQ records).
    outputs = ("moderation.verdicts", "moderation.audit", "moderation.dlq")
    written = sum(len(broker.records(t, read_committed=False)) for t in outputs)
    committed = sum(len(broker.records(t, read_committed=True)) for t in outputs)
    assert written > committed


def test_retriable_commit_error_is_retried(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 30)
    err = KafkaException(KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True))
    broker.inject("commit_transaction", err, times=2)
    inst = Instance(broker, store, settings_for(policies)).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    inst.shutdown()
    assert inst.error is None and inst.loop.stats.aborted == 0
    _assert_exactly_once(broker, ids, malformed)


def test_retriable_send_offsets_error_is_retried(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    """librdkafka reports a coordinator that is moving or still finishing the previous commit
    (CONCURRENT_TRANSACTIONS, a transport error) as retriable. Aborting then can meet the
    previous transaction still being completed, which Kafka refuses with INVALID_TXN_STATE,
    fatal in librdkafka: the call must be retried instead."""
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 30)
    err = KafkaException(
        KafkaError(KafkaError.CONCURRENT_TRANSACTIONS, "previous commit ongoing", retriable=True)
    )
    broker.inject("send_offsets_to_transaction", err, times=2)
    inst = Instance(broker, store, settings_for(policies)).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    inst.shutdown()
    assert inst.error is None and inst.loop.stats.aborted == 0
    _assert_exactly_once(broker, ids, malformed)


def test_fenced_zombie_stops_with_fatal_error(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    broker, store, policies = world
    seed_uploads(broker, store, 10)
    settings = settings_for(policies)
    zombie = Instance(broker, store, settings).start()
    wait_for(lambda: len(verdict_ids(broker)) == 10, what="first verdicts")
    # a new instance with the same transactional.id fences the old one
    broker.producer({"transactional.id": settings.transactional_id}).init_transactions()
    seed_uploads(broker, store, 20)
    zombie.thread.join(30)
    assert isinstance(zombie.error, FatalKafkaError)
    # the line says what happened and what to do, not only librdkafka's error
    assert str(zombie.error).endswith(f": {FENCED_HINT}")
    assert "give each process its own instance_id" in FENCED_HINT


def test_a_client_error_no_step_handles_ends_the_loop_as_fatal_and_loses_nothing(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 60)
    state = KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
    broker.inject("consume", state, skip=3)
    first = Instance(broker, store, settings_for(policies)).start()
    first.thread.join(30)
    assert isinstance(first.error, FatalKafkaError)  # not the client's raw exception
    assert "consume loop cannot go on" in str(first.error)
    assert "Erroneous state" in str(first.error)
    first.consumer.close()  # as the service does on its way out: the group takes back its share
    second = Instance(broker, store, settings_for(policies)).start()
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    second.shutdown()
    assert second.error is None
    _assert_exactly_once(broker, ids, malformed)


def test_a_fenced_error_seen_outside_a_checkpoint_says_what_to_do() -> None:
    fenced = KafkaException(KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True))
    assert str(client_failure(fenced)).endswith(f": {FENCED_HINT}")
    other = KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
    assert FENCED_HINT not in str(client_failure(other))


def test_rebalance_between_two_instances_keeps_exactly_once(
    world: tuple[MemoryBroker, InMemoryObjectStore, Path],
) -> None:
    broker, store, policies = world
    ids, malformed = seed_uploads(broker, store, 200, malformed_every=11)
    a = Instance(broker, store, settings_for(policies, instance_id="a")).start()
    wait_for(lambda: len(verdict_ids(broker)) >= 20, what="some verdicts")
    b = Instance(broker, store, settings_for(policies, instance_id="b")).start()
    wait_for(lambda: len(verdict_ids(broker)) >= 100, what="more verdicts")
    a.shutdown()  # revokes: b takes every partition from the committed offsets
    wait_for(lambda: _all_done(broker, ids, malformed), what="all verdicts")
    b.shutdown()
    assert a.error is None and b.error is None
    _assert_exactly_once(broker, ids, malformed)


# -- the scenarios shared with the real-broker tier (integration/test_exactly_once_kafka.py) ---


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_shared_crash_scenario(tmp_path: Path, point: str) -> None:
    run = crash_then_restart(MemoryWorld(), write_policies(tmp_path), point, 3)
    assert run.problems() == []


def test_shared_fenced_zombie(tmp_path: Path) -> None:
    run = fenced_zombie(MemoryWorld(), write_policies(tmp_path))
    assert isinstance(run.instances[0].error, FatalKafkaError)
    assert run.problems() == []


@pytest.mark.parametrize("members", [2, 3])
def test_shared_rebalance(tmp_path: Path, members: int) -> None:
    faster = {"engine.fake.latency_ms": 10}
    run = rebalance(MemoryWorld(), write_policies(tmp_path), members, events=200, **faster)
    assert run.problems() == []
    shares = [i.loop.stats.committed_messages for i in run.instances]
    assert all(shares) and sum(shares) == 200, shares


def test_broken_checkpoint_loses_events(tmp_path: Path) -> None:
    """The scenarios can fail: offsets committed before the transaction lose the events of a
    crash in between."""
    undo = break_checkpoint()
    try:
        run = crash_then_restart(MemoryWorld(), write_policies(tmp_path), "commit_transaction", 3)
    finally:
        undo()
    assert any("without a verdict" in p for p in run.problems()), run.problems()
