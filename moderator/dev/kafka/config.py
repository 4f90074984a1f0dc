"""The files a development Apache Kafka node starts from: server.properties and log4j2 config.

Pure: every function maps its arguments to text or a dict, so the settings the test tier relies
on (replication, min ISR, transaction timers) are checked without starting a JVM.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class NodePorts:
    """The two loopback ports of one node: clients, and the KRaft controller quorum."""

    client: int
    controller: int


def new_cluster_id() -> str:
    """A random cluster id in the form Kafka's StorageTool expects (base64url of a UUID)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


def node_id(index: int) -> int:
    """Kafka's node.id for the node at `index` (0-based): ids start at 1."""
    return index + 1


def replication(nodes: int) -> int:
    """Replication factor of internal and auto-created topics: every node, at most three."""
    return min(3, nodes)


def min_isr(nodes: int) -> int:
    """In-sync replicas required for acks=all: one less than the replication factor, so one node
    of a three-node cluster can be down and the cluster keeps accepting writes."""
    return max(1, replication(nodes) - 1)


def server_properties(
    index: int,
    ports: Sequence[NodePorts],
    data_dir: Path,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """server.properties for node `index` of a cluster whose nodes listen on `ports`.

    Every node is broker and controller; the controller quorum is static (all nodes vote).
    The values suit tests: fast first rebalance, aborted transactions cleaned up within a
    second, small internal topics, bounded cleaner memory. `overrides` win over all of them.
    """
    if not 0 <= index < len(ports):
        raise ValueError(f"node index {index} out of range for {len(ports)} nodes")
    nodes = len(ports)
    own = ports[index]
    voters = ",".join(f"{node_id(i)}@{LOOPBACK}:{p.controller}" for i, p in enumerate(ports))
    rf, isr = str(replication(nodes)), str(min_isr(nodes))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id(index)),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{LOOPBACK}:{own.client},CONTROLLER://{LOOPBACK}:{own.controller}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{own.client}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "group.initial.rebalance.delay.ms": "0",
        # Timed-out transactions are aborted within about a second instead of ten.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        # A handful of threads is plenty for tests and keeps a node's memory small.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    }
    props.update(overrides or {})
    return props


def render_properties(props: Mapping[str, str]) -> str:
    """A Java properties file; keys and values here never need escaping beyond backslashes."""
    lines = []
    for key, value in props.items():
        if "\n" in key or "\n" in value or "=" in key:
            raise ValueError(f"kafka config key {key!r}: newlines and '=' are not allowed")
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def log4j2_properties(level: str = "WARN") -> str:
    """log4j2 config: the broker's log lines at `level` and above, to stdout (the node's log)."""
    return "\n".join(
        [
            "status = warn",
            "appender.out.type = Console",
            "appender.out.name = OUT",
            "appender.out.target = SYSTEM_OUT",
            "appender.out.layout.type = PatternLayout",
            "appender.out.layout.pattern = [%d] %p %m (%c)%n",
            f"rootLogger.level = {level}",
            "rootLogger.appenderRef.out.ref = OUT",
            "",
        ]
    )
