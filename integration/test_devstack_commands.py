"""`moderator dev-stack` as a first-hour user meets it: topics made at start, the env file, the
guide on stderr, and `dev-stack upload` / `dev-stack verdicts` against a running stack."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from devstack_support import dev_stack
from kafka_support import broker_unavailable
from moderator.dev.kafka.jars import broker_jars
from moderator.dev.ports import bind_problem
from moderator.dev.samples import make_sample
from moderator.dev.stack import EmbeddedStack
from moderator.errors import ConfigError
from moderator.events.parse import parse_message
from moderator.events.s3notify import TenantRule

ROLES = ("uploads", "verdicts", "audit", "dlq", "replay")


def _wait_for_guide(stderr_path: Path, timeout_s: float = 10) -> str:
    """stderr once the guide's last line is there (it follows `ready`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = stderr_path.read_text()
        if "dev-stack: serving until" in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no guide on stderr:\n{stderr_path.read_text()}")


def _listed_topics(bootstrap: str) -> set[str]:
    # Listing every topic creates none (a producer naming a topic would create it on the mock).
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return set(admin.list_topics(timeout=10).topics)


def test_dev_stack_creates_topics_and_writes_env_file(tmp_path: Path, unique: str) -> None:
    names = {role: f"{role}-{unique}" for role in ROLES}
    config = tmp_path / "settings.yaml"
    config.write_text(
        "kafka:\n  topics:\n" + "".join(f"    {r}: {n}\n" for r, n in names.items()),
        encoding="utf-8",
    )
    env_file = tmp_path / "stack.env"
    with dev_stack(tmp_path, "--env-file", "stack.env", "--config", str(config)) as started:
        proc, exports, stderr_path = started
        # The file holds the export lines stdout carries, complete once `ready` is printed.
        assert env_file.read_text().splitlines()[1:] == exports
        bootstrap = exports[0].split("=", 1)[1]
        assert set(names.values()) <= _listed_topics(bootstrap)
        guide = _wait_for_guide(stderr_path)
        assert "bucket uploads" in guide
        assert ", ".join(names.values()) + " (4 partitions each)" in guide
        assert "load it in a shell: . ./stack.env" in guide
        assert "moderator dev-stack upload" in guide and "moderator dev-stack verdicts" in guide
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, stderr_path.read_text()
        assert proc.stdout is not None
        assert proc.stdout.read() == ""  # nothing after `ready`
    assert not env_file.exists()  # removed on exit: never sourced for a stack that is gone


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dev_stack_serves_s3_on_the_port_chosen(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with dev_stack(tmp_path, "--s3-port", str(port), "--env-file", "stack.env") as started:
        proc, exports, stderr_path = started
        assert f"export MODERATOR_S3__ENDPOINT_URL={endpoint}" in exports
        assert (
            f"export MODERATOR_S3__ENDPOINT_URL={endpoint}" in (tmp_path / "stack.env").read_text()
        )
        assert f"dev-stack: S3: {endpoint}, bucket uploads" in _wait_for_guide(stderr_path)
        assert bind_problem(port) == "the port is in use"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, stderr_path.read_text()
    assert bind_problem(port) is None  # released on exit: the next stack can pin it again


def test_dev_stack_stops_on_sighup(tmp_path: Path) -> None:
    with dev_stack(tmp_path, "--env-file", "stack.env") as (proc, _exports, stderr_path):
        proc.send_signal(signal.SIGHUP)  # the terminal of the shell that started it closed
        assert proc.wait(10) == 0, stderr_path.read_text()
    assert not (tmp_path / "stack.env").exists()


def _env(stack: EmbeddedStack, unique: str) -> dict[str, str]:
    return {
        **os.environ,
        **stack.env(),
        "MODERATOR_KAFKA__TOPICS__UPLOADS": f"up-{unique}",
        "MODERATOR_KAFKA__TOPICS__VERDICTS": f"verdicts-{unique}",
    }


def _moderator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderator.cli.main", "dev-stack", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def _read_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(10, 0.2) if m.error() is None)
        return got
    finally:
        consumer.close()


def test_upload_puts_the_file_and_sends_its_event(
    stack: EmbeddedStack, tmp_path: Path, unique: str
) -> None:
    sample = make_sample("png", seed=3)
    photo = tmp_path / "photo.png"
    photo.write_bytes(sample.data)
    env = _env(stack, unique)
    done = _moderator(env, "upload", str(photo), "--tenant", "acme", "--surface", "profile")
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    assert event_id.startswith("dev-") and done.stdout.count("\n") == 1
    assert f"s3://uploads/acme/photo.png ({len(sample.data)} bytes)" in done.stderr

    s3 = stack.s3_client()
    stored = s3.get_object(Bucket="uploads", Key="acme/photo.png")
    assert stored["Body"].read() == sample.data
    assert stored["ContentType"] == "image/png"
    s3.close()

    (message,) = _read_all(stack.bootstrap_servers, f"up-{unique}", 1)
    event = json.loads(message.value())
    assert message.key() == b"acme:uploads/acme/photo.png"
    assert event["event_id"] == event_id and event["tenant_id"] == "acme"
    assert event["object"]["key"] == "acme/photo.png"
    assert event["object"]["version_id"] == stored["VersionId"]
    assert event["object"]["size"] == len(sample.data)
    assert event["context"]["surface"] == "profile"


def test_upload_as_an_sns_envelope_around_an_s3_notification(
    stack: EmbeddedStack, tmp_path: Path, unique: str
) -> None:
    photo = tmp_path / "my photo.jpg"
    photo.write_bytes(make_sample("jpeg", seed=4).data)
    done = _moderator(
        _env(stack, unique), "upload", str(photo), "--tenant", "acme", "--shape", "sns-s3"
    )
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    assert event_id.startswith("s3-")
    assert "as an SNS envelope around an S3 event notification" in done.stderr

    (message,) = _read_all(stack.bootstrap_servers, f"up-{unique}", 1)
    assert message.key() == b"acme:uploads/acme/my photo.jpg"
    record = json.loads(json.loads(message.value())["Message"])["Records"][0]
    assert record["s3"]["object"]["key"] == "acme/my+photo.jpg"
    (event,) = parse_message(message.value(), TenantRule()).events
    assert (event.event_id, event.tenant_id) == (event_id, "acme")
    stored = stack.s3_client().head_object(Bucket="uploads", Key="acme/my photo.jpg")
    assert event.object.version_id == stored["VersionId"]


def test_upload_with_a_bad_tenant_writes_nothing(
    stack: EmbeddedStack, tmp_path: Path, unique: str
) -> None:
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"x")
    done = _moderator(_env(stack, unique), "upload", str(photo), "--tenant", f"Bad {unique}")
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert "--tenant" in done.stderr and "is not a tenant id" in done.stderr
    listed = stack.s3_client().list_objects_v2(Bucket="uploads", Prefix=f"Bad {unique}")
    assert listed.get("KeyCount") == 0


def test_verdicts_waits_for_ids_and_lists_the_topic(stack: EmbeddedStack, unique: str) -> None:
    topic = f"verdicts-{unique}"
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    docs = [{"schema": "moderator.verdict/v1", "event_id": f"e{i}-{unique}"} for i in range(3)]
    for doc in docs:
        producer.produce(topic, key=doc["event_id"].encode(), value=json.dumps(doc).encode())
    producer.produce(topic, key=b"junk", value=b"{not json")  # skipped, not fatal
    assert producer.flush(10) == 0
    env = _env(stack, unique)

    done = _moderator(env, "verdicts", docs[2]["event_id"], docs[0]["event_id"])
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [docs[2], docs[0]]

    everything = _moderator(env, "verdicts")  # no ids: what is there now, then exit
    assert everything.returncode == 0, everything.stderr
    listed = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted(d["event_id"] for d in listed) == sorted(d["event_id"] for d in docs)

    missing = _moderator(env, "verdicts", "--timeout", "2", docs[1]["event_id"], "nope")
    assert missing.returncode == 1
    assert [json.loads(line) for line in missing.stdout.splitlines()] == [docs[1]]
    assert missing.stderr.startswith(
        "moderator: dev-stack verdicts: no verdict within 2 s for nope"
    )


def test_dev_stack_apache_creates_topics_from_specs(tmp_path: Path) -> None:
    try:
        broker_jars()
    except ConfigError as exc:
        broker_unavailable(str(exc))
    port = _free_port()
    with dev_stack(
        tmp_path, "--kafka", "apache", "--kafka-port", str(port), timeout_s=120
    ) as started:
        proc, exports, stderr_path = started
        bootstrap = exports[0].split("=", 1)[1]
        assert bootstrap == f"127.0.0.1:{port}"  # the port asked for, in the export lines
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = admin.list_topics(timeout=10).topics
        expected = {
            "uploads": 12,
            "moderation.verdicts": 12,
            "moderation.audit": 12,
            "moderation.dlq": 3,
            "moderation.replay": 12,
        }
        for name, partitions in expected.items():
            assert len(topics[name].partitions) == partitions, name
            assert all(len(p.replicas) == 1 for p in topics[name].partitions.values())
        resource = ConfigResource("TOPIC", "moderation.verdicts")
        configs = next(iter(admin.describe_configs([resource]).values())).result(timeout=10)
        assert configs["cleanup.policy"].value == "compact"
        assert configs["min.insync.replicas"].value == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stderr_path.read_text()
