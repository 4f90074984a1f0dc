"""Exactly-once across a broker crash: on a three-node cluster (replication 3, min ISR 2), the
node that coordinates the loop's transactions (or the one leading the verdict partitions and
the consumer group) is SIGKILLed while the loop runs and started again later. The loop
recovers by itself (retries, or aborts and rewinds) and a read_committed reader still sees one
verdict and one audit record per event."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient

from eos_kafka import KafkaWorld
from moderator.fetch.store import InMemoryObjectStore
from tests.eos_scenarios import (
    Instance,
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

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka

pytestmark = pytest.mark.slow  # about 30 s a test, most of it Kafka noticing the dead node

EVENTS = 600
TRANSACTION_STATE = "__transaction_state"


def _java_hash(text: str) -> int:
    """Java's String.hashCode (UTF-16 code units, 32-bit overflow), signed."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _leader(admin: AdminClient, topic: str, partition: int) -> int:
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
    return int(described.partitions[partition].leader.id)


def _transaction_coordinator(admin: AdminClient, transactional_id: str) -> int:
    """The node leading the __transaction_state partition of `transactional_id`, as Kafka's
    TransactionStateManager.partitionFor picks it."""
    topic = admin.describe_topics(TopicCollection([TRANSACTION_STATE]))[TRANSACTION_STATE]
    count = len(topic.result(30).partitions)
    h = _java_hash(transactional_id)
    partition = (0 if h == -(1 << 31) else abs(h)) % count
    return _leader(admin, TRANSACTION_STATE, partition)


def _index_of(cluster: ApacheKafka, node_id: int, admin: AdminClient) -> int:
    nodes = admin.describe_cluster().result(30).nodes
    address = next(f"{n.host}:{n.port}" for n in nodes if n.id == node_id)
    return next(i for i in range(cluster.brokers) if cluster.address(i) == address)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_policies(tmp_path_factory.mktemp("policies"))


@pytest.mark.parametrize("victim", ["transaction coordinator", "verdict partition leader"])
def test_broker_killed_mid_transaction_then_restarted(
    apache_kafka_cluster: ApacheKafka, policies: Path, victim: str, request: pytest.FixtureRequest
) -> None:
    cluster = apache_kafka_cluster
    world = KafkaWorld(cluster.bootstrap_servers)
    request.addfinalizer(world.close)
    store, names = InMemoryObjectStore(), Names.unique("restart")
    world.create_topics(names.topics)
    ids, malformed = seed(world, store, names, EVENTS, malformed_every=13)
    settings = eos_settings(
        world,
        names,
        policies,
        # about 200 events/s: the kill lands with transactions open and work in flight
        **{"engine.fake.latency_ms": 20, "engine.batch_size": 4, "kafka.commit_interval_ms": 100},
    )
    if victim == "transaction coordinator":
        node = _transaction_coordinator(world.admin, settings.transactional_id)
    else:
        node = _leader(world.admin, names.verdicts, 0)
    index = _index_of(cluster, node, world.admin)
    instance = Instance(world, store, settings).start()
    request.addfinalizer(instance.stop.set)  # a failed test leaves no loop running

    def why() -> str:
        try:
            offsets = f"committed {world.committed(names.group, names.uploads)}"
        except Exception as exc:
            offsets = f"committed offsets unreadable: {exc}"
        return f"{offsets}, {instance.loop.stats}, {instance.error!r}\n{instance.where()}"

    try:
        wait_for(lambda: progress(world, names) >= EVENTS // 5, 60, "progress before the kill")
        killed_at = progress(world, names)
        cluster.stop_broker(index, kill=True)
        started = time.monotonic()
        wait_for(
            lambda: progress(world, names) >= killed_at + EVENTS // 5 or finished(world, names),
            90,
            "progress with the node down",
            why,
        )
        recovered_s = time.monotonic() - started
    finally:
        cluster.start_broker(index)  # the next test needs all three
    wait_for(lambda: finished(world, names), 90, "every offset committed", why)
    instance.shutdown()
    assert instance.error is None, instance.error
    problems = exactly_once_problems(outcome(world, names), ids, malformed)
    assert problems == [], problems
    stats = instance.loop.stats
    print(
        f"\nkilled node {node} ({victim}) at {killed_at}/{EVENTS} committed; progress again "
        f"after {recovered_s:.1f}s; checkpoints {stats.checkpoints}, aborted {stats.aborted}"
    )
