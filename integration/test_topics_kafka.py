"""`moderator topics create` on a real Apache Kafka broker: topics created with their partition
counts and configs, a second run reports them as existing, a topic made differently is reported
(never altered), a topic the broker refuses fails the command; on the embedded mock cluster the
command says in one line that it cannot administer topics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from moderator.cli.main import main
from moderator.cli.topics import ensure_at_startup
from moderator.dev.stack import EmbeddedStack
from moderator.ingest.topics import ROLES, topic_specs
from moderator.settings import load_settings

if TYPE_CHECKING:
    from moderator.dev.kafka.cluster import ApacheKafka


def _config(tmp_path: Path, bootstrap: str, unique: str, **kafka: Any) -> Path:
    """One-node settings: replication 1, small partition counts, topic names unique to the test."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "startup_timeout_s": 20,
        "topics": {role: f"{role}-{unique}" for role in ROLES},
        "topic_specs": {
            role: {"partitions": n, "replication_factor": 1}
            for role, n in zip(ROLES, (3, 2, 4, 1, 2), strict=True)
        },
    }
    for key, value in kafka.items():
        if key == "topic_specs":
            for role, spec in value.items():
                values["topic_specs"][role].update(spec)
        else:
            values[key] = value
    path = tmp_path / f"settings-{unique}.yaml"
    path.write_text(yaml.safe_dump({"kafka": values}))
    return path


def _rows(out: str) -> dict[str, list[str]]:
    """topic -> [partitions, replication, configs, status] from the printed table."""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["topic", "partitions", "replication", "configs", "status"]
    rows = {}
    for line in lines[1:]:
        topic, partitions, replication, configs, *status = line.split()
        rows[topic] = [partitions, replication, configs, " ".join(status)]
    return rows


def _describe(admin: AdminClient, topic: str) -> tuple[int, dict[str, str]]:
    """Partition count and configs; a topic just created may take a moment to show."""
    deadline = time.monotonic() + 20
    while True:
        found = admin.list_topics(topic, timeout=10).topics[topic]
        if (found.error is None and found.partitions) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    partitions = len(found.partitions)
    futures = admin.describe_configs([ConfigResource("TOPIC", topic)], request_timeout=10)
    entries = next(iter(futures.values())).result(20)
    return partitions, {k: e.value for k, e in entries.items()}


def test_create_then_exists(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, apache_kafka.bootstrap_servers, unique)
    specs = topic_specs(load_settings(config).kafka)

    assert main(["topics", "create", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = _rows(out)
    assert {t: r[3] for t, r in rows.items()} == {s.name: "created" for s in specs}

    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap_servers})
    for spec in specs:
        assert rows[spec.name][:3] == [str(spec.partitions), "1", spec.configs_text()]
        partitions, configs = _describe(admin, spec.name)
        assert partitions == spec.partitions
        for key, value in spec.configs.items():
            assert configs[key] == value, (spec.name, key)
    _, verdicts = _describe(admin, f"verdicts-{unique}")
    _, audit = _describe(admin, f"audit-{unique}")
    assert verdicts["cleanup.policy"] == "compact"
    assert audit["cleanup.policy"] == "delete"

    assert main(["topics", "create", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert {r[3] for r in _rows(out).values()} == {"exists"}


def test_existing_topic_that_differs_is_reported_not_altered(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap_servers})
    verdicts = f"verdicts-{unique}"
    made = admin.create_topics([NewTopic(verdicts, 5, 1, config={"cleanup.policy": "delete"})])
    made[verdicts].result(30)
    config = _config(tmp_path, apache_kafka.bootstrap_servers, unique)

    assert main(["topics", "create", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert _rows(out)[verdicts][3] == "differs"
    warnings = err.strip().splitlines()
    assert (
        f"moderator: warning: topic {verdicts}: partitions is 5 on the cluster, 2 in the spec "
        "(left unchanged)"
    ) in warnings
    assert (
        f"moderator: warning: topic {verdicts}: cleanup.policy is delete on the cluster, compact "
        "in the spec (left unchanged)"
    ) in warnings
    assert all(verdicts in line for line in warnings), warnings  # the others were created
    assert _describe(admin, verdicts)[0] == 5
    assert _describe(admin, verdicts)[1]["cleanup.policy"] == "delete"


def test_dry_run_creates_nothing(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, apache_kafka.bootstrap_servers, unique)
    assert main(["topics", "create", "--dry-run", "--config", str(config)]) == 0
    assert {r[3] for r in _rows(capsys.readouterr().out).values()} == {"would create"}
    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap_servers})
    assert not {f"{role}-{unique}" for role in ROLES} & set(admin.list_topics(timeout=10).topics)


def test_refused_topic_fails_the_command_in_one_line(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(
        tmp_path,
        apache_kafka.bootstrap_servers,
        unique,
        topic_specs={"dlq": {"replication_factor": 3}},  # one broker
    )
    assert main(["topics", "create", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    rows = _rows(out)
    assert rows[f"dlq-{unique}"][3] == "failed"
    assert rows[f"audit-{unique}"][3] == "created"
    assert err.startswith(f"moderator: kafka: 1 topic(s) refused by the cluster: dlq-{unique}: ")
    assert "replication factor" in err.lower() and err.count("\n") == 1


def test_run_start_up_creates_the_topics(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path
) -> None:
    settings = load_settings(
        _config(tmp_path, apache_kafka.bootstrap_servers, unique, create_topics=True)
    )
    ensure_at_startup(settings)
    ensure_at_startup(settings)  # a second pod starting: nothing to do
    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap_servers})
    assert _describe(admin, f"audit-{unique}")[0] == 4


def test_embedded_mock_cluster_is_named_in_one_line(
    stack: EmbeddedStack, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, stack.bootstrap_servers, unique)
    started = time.monotonic()
    assert main(["topics", "create", "--config", str(config)]) == 1
    assert time.monotonic() - started < 10
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot create or describe topics" in err and "embedded mock cluster" in err


def test_a_transaction_timeout_the_broker_refuses_fails_the_check_and_the_start_in_one_line(
    apache_kafka: ApacheKafka, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moderator.errors import ConfigError
    from moderator.ingest.checkpoint import start_transactions
    from moderator.ingest.kafka import make_producer

    config = _config(
        tmp_path, apache_kafka.bootstrap_servers, unique, transaction_timeout_ms=3_600_001
    )
    assert main(["topics", "create", "--config", str(config)]) == 0  # a warning there
    err = capsys.readouterr().err
    assert "transaction.max.timeout.ms is" in err
    assert "below kafka.transaction_timeout_ms 3600001" in err
    assert main(["run", "--check", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "transaction.max.timeout.ms is" in out + err
    assert "lower kafka.transaction_timeout_ms, or raise the limit" in out + err
    settings = load_settings(config)
    producer = make_producer(settings)
    with pytest.raises(ConfigError, match=r"^kafka.transaction_timeout_ms: 3600001 is above"):
        start_transactions(producer, 20, settings.kafka.transaction_timeout_ms)
