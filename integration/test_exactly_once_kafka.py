"""Exactly-once on a real Apache Kafka broker: the real IngestLoop and confluent-kafka clients,
the fake engine and an in-memory object store, crashed at every step of the checkpoint,
fenced by a successor, rebalanced between two and three members; a read_committed reader sees
one verdict and one audit record per event, and the group's offsets end at the input's end.

The same scenarios (tests/eos_scenarios.py) run on the in-memory broker of the unit tier; the
tests here also compare the two brokers' outcomes. `pytest -p tests.eos_break_checkpoint`
runs this module with a checkpoint that commits its offsets outside the transaction: then the
crash tests fail with lost events, which test_broken_checkpoint_loses_events asserts always.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eos_kafka import KafkaWorld
from moderator.ingest.checkpoint import FatalKafkaError
from tests.eos_scenarios import (
    CRASH_POINTS,
    MemoryWorld,
    Run,
    break_checkpoint,
    crash_then_restart,
    fenced_zombie,
    rebalance,
)
from tests.harness import write_policies

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka


@pytest.fixture(scope="module")
def world(apache_kafka: ApacheKafka) -> Iterator[KafkaWorld]:
    world = KafkaWorld(apache_kafka.bootstrap_servers)
    yield world
    world.close()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_policies(tmp_path_factory.mktemp("policies"))


def _assert_exactly_once(run: Run) -> None:
    assert run.problems() == [], run.problems()


def _assert_same_as_memory(run: Run, memory: Run) -> None:
    """Parity: what a user observes is the same on the fake broker and on Kafka."""
    _assert_exactly_once(memory)
    assert run.outcome.comparable() == memory.outcome.comparable()


@pytest.mark.parametrize(
    ("point", "nth"), [(p, 3) for p in CRASH_POINTS] + [("commit_transaction", 1)]
)
def test_crash_at_checkpoint_step_then_restart(
    world: KafkaWorld, policies: Path, point: str, nth: int
) -> None:
    run = crash_then_restart(world, policies, point, nth)
    _assert_exactly_once(run)
    assert run.instances[1].loop.stats.aborted == 0
    _assert_same_as_memory(run, crash_then_restart(MemoryWorld(), policies, point, nth))


def test_fenced_zombie_stops_with_fatal_error(world: KafkaWorld, policies: Path) -> None:
    run = fenced_zombie(world, policies)
    zombie, successor = run.instances
    assert isinstance(zombie.error, FatalKafkaError), zombie.error
    assert "fenced" in str(zombie.error).lower(), zombie.error
    assert successor.error is None
    _assert_exactly_once(run)


@pytest.mark.parametrize("members", [2, 3])
def test_rebalance_mid_stream_keeps_exactly_once(
    world: KafkaWorld, policies: Path, members: int
) -> None:
    run = rebalance(world, policies, members)
    _assert_exactly_once(run)
    shares = [i.loop.stats.committed_messages for i in run.instances]
    assert all(shares), f"a member committed nothing: {shares}"
    # each committed message was committed once: the members' shares add up to the input
    assert sum(shares) == sum(run.outcome.ends.values()), shares
    if members == 2:
        _assert_same_as_memory(run, rebalance(MemoryWorld(), policies, members))


@pytest.fixture
def broken_checkpoint() -> Iterator[None]:
    undo = break_checkpoint()
    yield
    undo()


@pytest.mark.usefixtures("broken_checkpoint")
def test_broken_checkpoint_loses_events(world: KafkaWorld, policies: Path) -> None:
    """The suite can fail: with the offsets committed before the transaction, the crash
    between the two leaves offsets committed whose verdicts were aborted."""
    run = crash_then_restart(world, policies, "commit_transaction", 3)
    lost = set(run.ids) - set(run.outcome.verdict_counts())
    assert lost, "the broken checkpoint went unnoticed"
    assert run.outcome.committed == {p: end or None for p, end in run.outcome.ends.items()}
    assert any("without a verdict" in p for p in run.problems()), run.problems()
