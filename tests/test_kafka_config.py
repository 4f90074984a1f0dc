"""The development Kafka nodes' server.properties and log4j2 config (pure, no JVM)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from moderator.dev.kafka.config import (
    NodePorts,
    log4j2_properties,
    new_cluster_id,
    render_properties,
    server_properties,
)

ONE = [NodePorts(9092, 9093)]
THREE = [NodePorts(9092, 9093), NodePorts(9192, 9193), NodePorts(9292, 9293)]


def test_single_node_replicates_internal_topics_once() -> None:
    props = server_properties(0, ONE, Path("/data"))
    assert props["node.id"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["log.dirs"] == "/data"


def test_three_nodes_replicate_three_times_with_min_isr_two() -> None:
    props = server_properties(2, THREE, Path("/d"))
    assert props["node.id"] == "3"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
    )
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9292"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["default.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2"


def test_test_friendly_defaults_and_overrides() -> None:
    props = server_properties(0, ONE, Path("/d"))
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["transaction.abort.timed.out.transaction.cleanup.interval.ms"] == "1000"
    assert "transaction.max.timeout.ms" not in props  # Kafka's default
    overridden = server_properties(0, ONE, Path("/d"), {"num.partitions": "1", "x.y": "z"})
    assert overridden["num.partitions"] == "1"
    assert overridden["x.y"] == "z"


def test_node_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="node index 3"):
        server_properties(3, THREE, Path("/d"))


def test_render_properties() -> None:
    assert render_properties({"a": "1", "log.dirs": r"C:\k"}) == "a=1\nlog.dirs=C:\\\\k\n"
    with pytest.raises(ValueError, match="newlines"):
        render_properties({"a": "1\nb=2"})


def test_cluster_id_is_a_base64url_uuid() -> None:
    first, second = new_cluster_id(), new_cluster_id()
    assert first != second
    assert len(first) == 22
    assert len(base64.urlsafe_b64decode(first + "==")) == 16


def test_log4j2_config_logs_warnings_to_stdout() -> None:
    text = log4j2_properties()
    assert "rootLogger.level = WARN" in text
    assert "appender.out.target = SYSTEM_OUT" in text
