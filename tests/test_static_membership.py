"""`kafka.static_membership`: the service's consumer joins its group with a group.instance.id
derived like the transactional id (so each pod, and each --workers worker, has its own), and the
audit sink's consumer stays a dynamic member. What it changes on a real broker is in
integration/test_static_membership_kafka.py."""

from __future__ import annotations

from moderator.audit.sink.inputs import sink_consumer_config
from moderator.cli.workers import worker_settings
from moderator.ingest.kafka import consumer_config
from moderator.settings import Settings


def settings(static: bool) -> Settings:
    return Settings.model_validate(
        {"instance_id": "moderator-3", "kafka": {"group_id": "g", "static_membership": static}}
    )


def test_a_dynamic_member_by_default() -> None:
    assert "group.instance.id" not in consumer_config(Settings(instance_id="moderator-3"))
    assert "group.instance.id" not in consumer_config(settings(False))


def test_a_static_member_is_named_after_the_group_and_the_instance() -> None:
    conf = consumer_config(settings(True))
    assert conf["group.instance.id"] == "moderator-g-moderator-3"
    assert conf["session.timeout.ms"] == 45_000


def test_each_worker_is_its_own_static_member() -> None:
    ids = {consumer_config(worker_settings(settings(True), k))["group.instance.id"] for k in (0, 1)}
    assert ids == {"moderator-g-moderator-3-w0", "moderator-g-moderator-3-w1"}


def test_the_audit_sink_stays_a_dynamic_member() -> None:
    conf = sink_consumer_config(settings(True))
    assert "group.instance.id" not in conf
    assert conf["group.id"] == "g-audit-sink"
