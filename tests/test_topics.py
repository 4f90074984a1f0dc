"""Topic specs from the settings, how an existing topic differs from its spec, ensure_topics
against a fake AdminClient, and `moderator topics create` without a cluster."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from moderator.cli.main import main
from moderator.errors import ConfigError
from moderator.ingest.topic_admin import TopicAdminError, ensure_topics
from moderator.ingest.topics import (
    DAY_MS,
    ROLES,
    ExistingTopic,
    TopicSpec,
    differences,
    topic_specs,
)
from moderator.settings import load_settings


def _specs(**overrides: Any) -> dict[str, TopicSpec]:
    return {s.role: s for s in topic_specs(load_settings(overrides=overrides).kafka)}


def test_default_specs() -> None:
    specs = _specs()
    assert list(specs) == list(ROLES)
    assert [s.name for s in specs.values()] == [
        "uploads",
        "moderation.verdicts",
        "moderation.audit",
        "moderation.dlq",
        "moderation.replay",
    ]
    assert specs["verdicts"].configs["cleanup.policy"] == "compact"
    assert specs["verdicts"].configs["min.compaction.lag.ms"] == str(DAY_MS)
    for role in ("uploads", "audit", "dlq", "replay"):
        assert specs[role].configs["cleanup.policy"] == "delete"
        assert int(specs[role].configs["retention.ms"]) >= 7 * DAY_MS
    assert specs["dlq"].configs["retention.ms"] == str(14 * DAY_MS)
    for spec in specs.values():
        assert spec.replication_factor == 3
        assert spec.configs["min.insync.replicas"] == "2"
    assert (specs["uploads"].partitions, specs["dlq"].partitions) == (12, 3)


def test_configs_merge_over_defaults_and_null_drops_one() -> None:
    spec = _specs(
        **{
            "kafka.topics.verdicts": "v",
            "kafka.topic_specs.verdicts.partitions": 6,
            "kafka.topic_specs.verdicts.replication_factor": 1,
            "kafka.topic_specs.verdicts.configs": {
                "min.compaction.lag.ms": None,
                "segment.ms": 3_600_000,
                "preallocate": True,
            },
        }
    )["verdicts"]
    assert (spec.name, spec.partitions, spec.replication_factor) == ("v", 6, 1)
    assert dict(spec.configs) == {
        "cleanup.policy": "compact",
        "segment.ms": "3600000",
        "preallocate": "true",
        "min.insync.replicas": "1",  # replication_factor - 1, at least 1
    }
    assert spec.configs_text() == (
        "cleanup.policy=compact,min.insync.replicas=1,preallocate=true,segment.ms=3600000"
    )


@pytest.mark.parametrize("role", ["audit", "uploads", "dlq"])
@pytest.mark.parametrize("policy", ["compact", "delete,compact", " Compact "])
def test_compaction_refused_where_it_would_drop_unread_records(role: str, policy: str) -> None:
    with pytest.raises(ConfigError, match=rf"kafka\.topic_specs\.{role}\.configs: cleanup"):
        _specs(**{f"kafka.topic_specs.{role}.configs": {"cleanup.policy": policy}})


def test_replay_and_verdicts_may_choose_their_cleanup_policy() -> None:
    specs = _specs(
        **{
            "kafka.topic_specs.replay.configs": {"cleanup.policy": "compact"},
            "kafka.topic_specs.verdicts.configs": {"cleanup.policy": "delete"},
        }
    )
    assert specs["replay"].configs["cleanup.policy"] == "compact"
    assert specs["verdicts"].configs["cleanup.policy"] == "delete"


@pytest.mark.parametrize("isr", ["4", "0", "two", "-1"])
def test_min_insync_replicas_must_fit_the_replication_factor(isr: str) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.topic_specs\.audit\.configs: min\.insync"):
        _specs(**{"kafka.topic_specs.audit.configs": {"min.insync.replicas": isr}})


def test_two_roles_naming_one_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.topics\.audit: .*'x'.*kafka\.topics\.verdicts"):
        _specs(**{"kafka.topics.verdicts": "x", "kafka.topics.audit": "x"})


def test_bad_spec_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.topic_specs\.dlq\.partitions"):
        load_settings(overrides={"kafka.topic_specs.dlq.partitions": 0})
    with pytest.raises(ConfigError, match=r"kafka\.startup_timeout_s"):
        load_settings(overrides={"kafka.startup_timeout_s": 0})


def test_differences_name_the_topic_and_both_values() -> None:
    spec = _specs()["verdicts"]
    same = ExistingTopic(12, 3, {**spec.configs, "retention.ms": "1"})  # unspecified: ignored
    assert differences(spec, same) == []
    policy_order = ExistingTopic(12, 3, {**spec.configs, "cleanup.policy": "compact"})
    assert differences(spec, policy_order) == []
    other = ExistingTopic(4, 1, {**spec.configs, "cleanup.policy": "delete"})
    assert differences(spec, other) == [
        "topic moderation.verdicts: partitions is 4 on the cluster, 12 in the spec "
        "(left unchanged)",
        "topic moderation.verdicts: replication factor is 1 on the cluster, 3 in the spec "
        "(left unchanged)",
        "topic moderation.verdicts: cleanup.policy is delete on the cluster, compact in the spec "
        "(left unchanged)",
    ]
    both = _specs(**{"kafka.topic_specs.replay.configs": {"cleanup.policy": "delete,compact"}})
    reordered = ExistingTopic(12, 3, {**both["replay"].configs, "cleanup.policy": "compact,delete"})
    assert differences(both["replay"], reordered) == []


# -- ensure_topics against a fake AdminClient ------------------------------------------------


def _done(value: Any = None, error: int | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(KafkaException(KafkaError(error, "refused")))
    return future


@dataclass
class _Entry:
    value: str


@dataclass
class _Partition:
    replicas: list[int]


@dataclass
class _Topic:
    partitions: dict[int, _Partition]


@dataclass
class _Metadata:
    topics: dict[str, _Topic]
    brokers: dict[int, object] = field(default_factory=lambda: {1: object()})
    controller_id: int = 1


@dataclass
class FakeAdmin:
    """Topics with their configs; create_topics answers per topic from `refuse`."""

    topics: dict[str, tuple[int, int, dict[str, str]]] = field(default_factory=dict)
    refuse: dict[str, int] = field(default_factory=dict)
    controller_id: int = 1
    created: list[Any] = field(default_factory=list)
    validate_only: list[bool] = field(default_factory=list)
    unseen: dict[str, int] = field(default_factory=dict)  # metadata reads that miss a topic

    def list_topics(self, timeout: float = -1) -> _Metadata:
        for name, reads in self.unseen.items():
            self.unseen[name] = reads - 1
        topics = {
            name: _Topic({p: _Partition(list(range(rf))) for p in range(n)})
            for name, (n, rf, _) in self.topics.items()
            if self.unseen.get(name, -1) < 0
        }
        return _Metadata(topics, controller_id=self.controller_id)

    def create_topics(self, new: list[Any], **kwargs: Any) -> dict[str, Future[Any]]:
        self.validate_only.append(kwargs["validate_only"])
        out = {}
        for t in new:
            code = self.refuse.get(t.topic)
            if code == KafkaError.TOPIC_ALREADY_EXISTS:  # someone else was quicker
                self.topics[t.topic] = (t.num_partitions, t.replication_factor, dict(t.config))
            elif code is None and not kwargs["validate_only"]:
                self.created.append(t)
            out[t.topic] = _done(error=code)
        return out

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Future[Any]]:
        _, _, configs = self.topics[resources[0].name]
        entries = {k: _Entry(v) for k, v in configs.items()}
        return {resources[0]: _done(entries)}


def _small() -> list[TopicSpec]:
    return topic_specs(
        load_settings(
            overrides={f"kafka.topic_specs.{role}.replication_factor": 1 for role in ROLES}
        ).kafka
    )


def test_ensure_topics_creates_missing_and_reports_existing() -> None:
    specs = {s.role: s for s in _small()}
    admin = FakeAdmin(
        topics={
            "uploads": (12, 1, dict(specs["uploads"].configs)),
            "moderation.verdicts": (
                4,
                1,
                {**specs["verdicts"].configs, "cleanup.policy": "delete"},
            ),
        },
        refuse={
            "moderation.dlq": KafkaError.POLICY_VIOLATION,
            "moderation.replay": KafkaError.TOPIC_ALREADY_EXISTS,
        },
    )
    outcomes = {o.spec.role: o for o in ensure_topics(admin, list(specs.values()), timeout_s=5)}
    assert {r: o.status for r, o in outcomes.items()} == {
        "uploads": "exists",
        "verdicts": "differs",
        "audit": "created",
        "dlq": "failed",
        "replay": "exists",  # created meanwhile by another client, with this very spec
    }
    assert [t.topic for t in admin.created] == ["moderation.audit"]
    created = admin.created[0]
    assert (created.num_partitions, created.replication_factor) == (12, 1)
    assert created.config == dict(specs["audit"].configs)
    assert outcomes["verdicts"].details == (
        "topic moderation.verdicts: partitions is 4 on the cluster, 12 in the spec "
        "(left unchanged)",
        "topic moderation.verdicts: cleanup.policy is delete on the cluster, compact in the spec "
        "(left unchanged)",
    )
    assert "refused" in outcomes["dlq"].details[0]


def test_a_topic_not_yet_in_the_metadata_is_waited_for() -> None:
    """Just created (by another pod, or a moment ago): the controller says it exists while the
    broker's metadata does not show it yet."""
    specs = _small()
    admin = FakeAdmin(
        topics={s.name: (s.partitions, 1, dict(s.configs)) for s in specs},
        unseen={"moderation.audit": 3},
        refuse={"moderation.audit": KafkaError.TOPIC_ALREADY_EXISTS},
    )
    outcomes = ensure_topics(admin, specs, timeout_s=5)
    assert {o.status for o in outcomes} == {"exists"}
    assert admin.created == []


def test_dry_run_only_validates() -> None:
    admin = FakeAdmin()
    outcomes = ensure_topics(admin, _small(), timeout_s=5, dry_run=True)
    assert {o.status for o in outcomes} == {"would create"}
    assert admin.created == [] and admin.validate_only == [True]


def test_a_cluster_without_a_controller_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(TopicAdminError, match=r"no live controller.*embedded mock cluster"):
        ensure_topics(FakeAdmin(controller_id=0), _small(), timeout_s=30)
    assert time.monotonic() - started < 5


def test_create_topics_unanswered_is_one_error() -> None:
    admin = FakeAdmin(refuse={"uploads": KafkaError._TIMED_OUT})
    with pytest.raises(TopicAdminError, match=r"did not answer CreateTopics within 5 s"):
        ensure_topics(admin, _small(), timeout_s=5)


# -- the command without a cluster -----------------------------------------------------------


def test_command_with_bad_settings_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka:\n  topic_specs:\n    audit:\n      configs: {cleanup.policy: compact}\n"
    )
    assert main(["topics", "create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kafka.topic_specs.audit.configs" in err


def test_command_with_an_unreachable_cluster_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:1\n  startup_timeout_s: 1\n")
    started = time.monotonic()
    assert main(["topics", "create", "--config", str(config)]) == 1
    assert time.monotonic() - started < 10
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("moderator: kafka: cannot reach the cluster within 1 s")
    assert err.count("\n") == 1
    # Worded as `moderator run` words it: the servers, the reason, the setting to check.
    assert "(kafka.startup_timeout_s) at 127.0.0.1:1: " in err
    assert err.endswith("; check kafka.bootstrap_servers (MODERATOR_KAFKA__BOOTSTRAP_SERVERS)\n")


def test_command_with_a_client_setting_librdkafka_refuses_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  client: {no.such.property: '1'}\n")
    assert main(["topics", "create", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moderator: kafka: librdkafka refused the client configuration: ")
    assert err.count("\n") == 1


def test_run_with_create_topics_checks_the_topics_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: 127.0.0.1:1\n  startup_timeout_s: 1\n  create_topics: true\n"
    )
    assert main(["run", "--config", str(config), "--engine", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]]  # one line: the start-up probe, before topics or clients
    assert err[-1].startswith("moderator: kafka: cannot reach the cluster within 1 s")
