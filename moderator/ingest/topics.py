"""The topics the service uses, as specs built from the settings, and how an existing topic
differs from its spec. Pure: the cluster side is in topic_admin.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moderator.errors import ConfigError
from moderator.settings import KafkaSettings, TopicSpecSettings

DAY_MS = 24 * 3600 * 1000
ROLES = ("uploads", "verdicts", "audit", "dlq", "replay")

# Built-in configs per topic; `kafka.topic_specs.<role>.configs` is merged over them.
DEFAULT_CONFIGS: Mapping[str, Mapping[str, str]] = {
    # Replay reads uploads back by time range: retention bounds how far back it can go.
    "uploads": {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
    # Latest verdict per `{tenant}:{bucket}/{key}`; a reader less than a day behind still
    # sees every verdict, not only the latest.
    "verdicts": {"cleanup.policy": "compact", "min.compaction.lag.ms": str(DAY_MS)},
    # Never compacted: every audit record of an object shares its key. Retention is the time
    # the audit sink has to catch up; the audit store is the durable record.
    "audit": {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
    "dlq": {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS)},
    "replay": {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
}

# Compaction keeps one record per key: on these topics it would drop records the service or
# the audit sink still has to read (several uploads or audit records of one object).
NEVER_COMPACTED = frozenset({"uploads", "audit", "dlq"})


@dataclass(frozen=True)
class TopicSpec:
    role: str  # uploads, verdicts, audit, dlq or replay
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]

    def configs_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.configs.items()))


@dataclass(frozen=True)
class ExistingTopic:
    """What the cluster holds for one topic: counted from metadata, configs described."""

    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """One spec per topic role, in ROLES order; ConfigError (one line naming the key) for a
    spec that cannot work."""
    names: dict[str, str] = {}
    specs = []
    for role in ROLES:
        name: str = getattr(kafka.topics, role)
        if name in names:
            raise ConfigError(
                f"configuration error: kafka.topics.{role}: names the same topic {name!r} as "
                f"kafka.topics.{names[name]}"
            )
        names[name] = role
        specs.append(_spec(role, name, getattr(kafka.topic_specs, role)))
    return specs


def _spec(role: str, name: str, s: TopicSpecSettings) -> TopicSpec:
    key = f"kafka.topic_specs.{role}"
    configs = dict(DEFAULT_CONFIGS[role])
    for k, v in s.configs.items():
        if v is None:
            configs.pop(k, None)
        else:
            configs[k] = _text(v)
    # One replica may be down without stopping acks=all producers; never more than exist.
    configs.setdefault("min.insync.replicas", str(max(1, s.replication_factor - 1)))
    isr = configs["min.insync.replicas"]
    if not isr.isdigit() or not 1 <= int(isr) <= s.replication_factor:
        raise ConfigError(
            f"configuration error: {key}.configs: min.insync.replicas must be 1.."
            f"{s.replication_factor} (the replication_factor), got {isr!r}"
        )
    if role in NEVER_COMPACTED and "compact" in _policy(configs.get("cleanup.policy", "")):
        raise ConfigError(
            f"configuration error: {key}.configs: cleanup.policy must not include compact on "
            f"the {role} topic (compaction keeps one record per key and would drop records "
            "not yet read)"
        )
    return TopicSpec(role, name, s.partitions, s.replication_factor, configs)


def differences(spec: TopicSpec, existing: ExistingTopic) -> list[str]:
    """One line per way `existing` differs from `spec` (partition count, replication factor,
    each config the spec sets); [] when it matches."""
    out = []
    for what, have, want in (
        ("partitions", existing.partitions, spec.partitions),
        ("replication factor", existing.replication_factor, spec.replication_factor),
    ):
        if have != want:
            out.append(_line(spec.name, what, str(have), str(want)))
    for key, want_value in sorted(spec.configs.items()):
        have_value = existing.configs.get(key)
        if not _same(key, have_value, want_value):
            out.append(_line(spec.name, key, have_value or "unset", want_value))
    return out


def _line(topic: str, what: str, have: str, want: str) -> str:
    return f"topic {topic}: {what} is {have} on the cluster, {want} in the spec (left unchanged)"


def _same(key: str, have: str | None, want: str) -> bool:
    if have is None:
        return False
    if key == "cleanup.policy":
        return _policy(have) == _policy(want)
    return have.strip() == want.strip()


def _policy(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.lower().split(",") if p.strip())


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
