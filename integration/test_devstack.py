"""The dev stack, used in-process and through `moderator dev-stack` (mock or real Kafka)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from devstack_support import dev_stack, exported
from kafka_support import broker_unavailable
from moderator.dev.kafka.jars import broker_jars
from moderator.dev.stack import EmbeddedStack
from moderator.errors import ConfigError

EXPORTED = [
    "MODERATOR_KAFKA__BOOTSTRAP_SERVERS",
    "MODERATOR_KAFKA__DELIVERY",
    "MODERATOR_KAFKA__SESSION_TIMEOUT_MS",
    "MODERATOR_S3__ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
]
# The mock cluster delays a new group's first rebalance by ~3 s; leave room for it.
CONSUME_TIMEOUT_S = 20.0


def _produce(conf: dict[str, Any], topic: str, n: int) -> None:
    producer = Producer({**conf, "enable.idempotence": True})
    errors: list[object] = []
    for i in range(n):
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(10) == 0
    assert errors == []


def _consume(consumer: Consumer, n: int) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    return got


def _roundtrip_kafka(conf: dict[str, Any], topic: str, group: str, n: int = 10) -> None:
    """Produce n records, consume them in a group, commit, and read the commit back."""
    _produce(conf, topic, n)
    consumer = Consumer(
        {
            **conf,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        got = _consume(consumer, n)
        assert sorted(m.value() or b"" for m in got) == sorted(f"v{i}".encode() for i in range(n))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    expected: dict[int, int] = {}  # partition -> next offset to read
    for m in got:
        partition, offset = m.partition(), m.offset()
        assert partition is not None and offset is not None
        expected[partition] = max(expected.get(partition, 0), offset + 1)

    second = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        committed = second.committed(
            [TopicPartition(topic, p) for p in sorted(expected)], timeout=10
        )
    finally:
        second.close()
    assert {tp.partition: tp.offset for tp in committed} == expected


def test_in_process_kafka_roundtrip(kafka_conf: dict[str, Any], unique: str) -> None:
    _roundtrip_kafka(kafka_conf, f"devstack-{unique}", f"devstack-{unique}")


def test_topics_auto_create_with_four_partitions(kafka_conf: dict[str, Any], unique: str) -> None:
    topic = f"parts-{unique}"
    _produce(kafka_conf, topic, 1)
    producer = Producer(kafka_conf)
    metadata = producer.list_topics(topic, timeout=5)
    assert len(metadata.topics[topic].partitions) == 4


def test_in_process_s3_roundtrip(stack: EmbeddedStack, unique: str) -> None:
    s3 = stack.s3_client()
    key = f"tenant-a/{unique}.bin"
    put = s3.put_object(Bucket="uploads", Key=key, Body=b"payload")
    assert put.get("VersionId")  # the buckets are versioned
    got = s3.get_object(Bucket="uploads", Key=key)
    assert got["Body"].read() == b"payload"
    s3.close()


def test_env_does_not_touch_process_environment(stack: EmbeddedStack) -> None:
    env = stack.env()
    assert list(env) == EXPORTED
    assert env["MODERATOR_KAFKA__DELIVERY"] == "at_least_once"
    assert env["MODERATOR_S3__ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert os.environ.get("MODERATOR_S3__ENDPOINT_URL") != env["MODERATOR_S3__ENDPOINT_URL"]


def _assigned_after(conf: dict[str, Any], topic: str, group: str) -> float:
    """Seconds a new member of `group` waits for its first assignment; it then leaves."""
    assigned: list[float] = []
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    start = time.monotonic()
    try:
        consumer.subscribe([topic], on_assign=lambda *_: assigned.append(time.monotonic()))
        while not assigned and time.monotonic() - start < 90:
            consumer.poll(0.2)
    finally:
        consumer.close()  # leaves the group
    assert assigned, f"no assignment in 90 s for group {group}"
    return assigned[0] - start


def test_a_restarted_consumer_is_assigned_within_seconds(stack: EmbeddedStack, unique: str) -> None:
    # The mock holds a group whose last member left for its session timeout (less 1 s) before
    # assigning a new member: with Kafka's default 45 s every restart of `run` waited 44 s.
    env = stack.env()
    conf = {
        "bootstrap.servers": env["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"],
        "session.timeout.ms": int(env["MODERATOR_KAFKA__SESSION_TIMEOUT_MS"]),
    }
    topic, group = f"restart-{unique}", f"restart-{unique}"
    _produce(conf, topic, 1)
    _assigned_after(conf, topic, group)
    assert _assigned_after(conf, topic, group) < 12


def test_start_is_idempotent_and_stop_releases() -> None:
    local = EmbeddedStack(buckets=("devstack-idem",))
    try:
        assert local.start() is local
        first = local.bootstrap_servers
        assert local.start().bootstrap_servers == first
    finally:
        local.stop()
    local.stop()  # a second stop is harmless


# -- out of process ---------------------------------------------------------------------------


def test_a_taken_s3_port_fails_the_start_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack = EmbeddedStack(s3_port=port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: the port is in use"):
            stack.start()  # moto's own threaded server would wait for it forever
    with pytest.raises(ConfigError, match="mock cluster listens on a port the system picks"):
        EmbeddedStack(kafka_port=port)


@pytest.fixture
def dev_stack_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str], Path]]:
    with dev_stack(tmp_path) as started:
        yield started


def test_dev_stack_cli_serves_other_processes(
    dev_stack_process: tuple[subprocess.Popen[str], list[str], Path], unique: str
) -> None:
    proc, exports, stderr_path = dev_stack_process
    env = exported(exports)
    assert list(env) == EXPORTED
    assert env["MODERATOR_KAFKA__DELIVERY"] == "at_least_once"

    _roundtrip_kafka(
        {"bootstrap.servers": env["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"]},
        f"cli-{unique}",
        f"cli-{unique}",
        n=5,
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MODERATOR_S3__ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    s3.put_object(Bucket="uploads", Key=f"cli/{unique}", Body=b"hello")
    assert s3.get_object(Bucket="uploads", Key=f"cli/{unique}")["Body"].read() == b"hello"
    s3.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, stderr_path.read_text()
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # nothing after `ready`


def test_dev_stack_cli_exits_cleanly_on_sigint(
    dev_stack_process: tuple[subprocess.Popen[str], list[str], Path],
) -> None:
    proc, exports, stderr_path = dev_stack_process
    assert len(exports) == len(EXPORTED)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0, stderr_path.read_text()


def test_dev_stack_apache_serves_exactly_once(tmp_path: Path, unique: str) -> None:
    try:
        broker_jars()
    except ConfigError as exc:
        broker_unavailable(str(exc))
    with dev_stack(tmp_path, "--kafka", "apache", timeout_s=120) as started:
        proc, exports, stderr_path = started
        env = exported(exports)
        # A real broker reassigns a left member's partitions at once: no timeout to shorten.
        assert list(env) == [k for k in EXPORTED if k != "MODERATOR_KAFKA__SESSION_TIMEOUT_MS"]
        assert env["MODERATOR_KAFKA__DELIVERY"] == "exactly_once"
        conf = {"bootstrap.servers": env["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"]}
        _roundtrip_kafka(conf, f"apache-{unique}", f"apache-{unique}", n=5)
        producer = Producer({**conf, "transactional.id": f"dev-stack-{unique}"})
        producer.init_transactions(30)  # the mock's transactions are not the real thing

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stderr_path.read_text()
        assert proc.stdout is not None
        assert proc.stdout.read() == ""


def test_dev_stack_apache_without_java_is_a_usage_error(tmp_path: Path) -> None:
    # An empty PATH: neither java nor mvn can be found.
    done = subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "dev-stack", "--kafka", "apache"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "java: not found on PATH" in done.stderr


def test_dev_stack_help_names_both_brokers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "dev-stack", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--kafka mock|apache" in text
    assert "MODERATOR_KAFKA__DELIVERY=exactly_once" in text
    assert "MODERATOR_KAFKA__DELIVERY=at_least_once" in text
