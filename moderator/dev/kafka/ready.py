"""Readiness of the development Kafka nodes: every node in the cluster, and transactions working.

A node counts as up once it answers a metadata request that lists every running node; a cluster
is ready for the service once a throwaway transactional producer can also commit offsets, which
needs the transaction and group coordinators (and their internal topics) to be up.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from moderator.dev.errors import DevStackError
from moderator.dev.kafka import config as kafka_config
from moderator.dev.kafka.process import last_line

# The readiness probe commits offsets for this topic in an aborted transaction: the cluster has it.
PROBE_TOPIC = "moderator-devstack-probe"
_PROBE_TIMEOUT_S = 2.0
_POLL_S = 0.2
# librdkafka logs every refused connection while a node starts; probes stay quiet.
_QUIET = {"log_level": 0}


class Node(Protocol):
    """What the wait reads of a node: its index, address, log and process (None: stopped)."""

    @property
    def index(self) -> int: ...

    @property
    def address(self) -> str: ...

    @property
    def log(self) -> Path: ...

    @property
    def process(self) -> subprocess.Popen[bytes] | None: ...


def wait_ready(nodes: Sequence[Node], timeout_s: float, *, transactions: bool) -> None:
    """For up to `timeout_s`: every running node answers metadata listing every running node,
    and (with transactions=True) a transactional producer can commit offsets. DevStackError
    when a node exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    running = [n for n in nodes if n.process is not None]
    expected = {kafka_config.node_id(n.index) for n in running}
    probes = {n.index: AdminClient({"bootstrap.servers": n.address, **_QUIET}) for n in running}
    bootstrap = ",".join(n.address for n in nodes)
    waiting = list(running)
    while True:
        for node in running:
            _check_alive(node)
        waiting = [n for n in waiting if not _answers(probes[n.index], expected)]
        if not waiting and (not transactions or transactions_work(bootstrap, deadline)):
            return
        if time.monotonic() >= deadline:
            node = waiting[0] if waiting else running[0]
            what = "did not answer" if waiting else "could not run a transaction"
            raise DevStackError(
                f"kafka node {node.index} {what} within {timeout_s:.0f} s "
                f"({node.log}: {last_line(node.log) or 'empty log'})"
            )
        time.sleep(_POLL_S)


def _check_alive(node: Node) -> None:
    process = node.process
    if process is not None and process.poll() is not None:
        raise DevStackError(
            f"kafka node {node.index} exited with code {process.returncode} "
            f"({node.log}: {last_line(node.log) or 'empty log'})"
        )


def transactions_work(bootstrap_servers: str, deadline: float) -> bool:
    """Whether a throwaway transactional producer can initialise and commit offsets: the
    transaction and group coordinators (and their internal topics) are up."""
    suffix = uuid.uuid4().hex[:12]
    timeout = max(min(deadline - time.monotonic(), 10.0), _PROBE_TIMEOUT_S)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": f"moderator-devstack-probe-{suffix}",
            **_QUIET,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"moderator-devstack-probe-{suffix}",
            **_QUIET,
        }
    )
    try:
        producer.init_transactions(timeout)
        producer.begin_transaction()
        # Offsets can only be committed for a topic that exists: the record creates it.
        producer.produce(PROBE_TOPIC, b"", partition=0)
        producer.flush(timeout)
        producer.send_offsets_to_transaction(
            [TopicPartition(PROBE_TOPIC, 0, 0)], consumer.consumer_group_metadata(), timeout
        )
        producer.abort_transaction(timeout)
    except KafkaException:
        return False
    finally:
        consumer.close()
        producer.flush(0)
    return True


def _answers(admin: AdminClient, expected: set[int]) -> bool:
    try:
        metadata = admin.list_topics(timeout=_PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return expected <= set(metadata.brokers)
