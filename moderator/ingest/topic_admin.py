"""Create the service's topics on a cluster and check the ones that exist (AdminClient).

Existing topics are never altered: how they differ from their spec is reported instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

# Both are re-exported by confluent_kafka.admin without being listed as exports.
from confluent_kafka.admin import ConfigResource, NewTopic  # type: ignore[attr-defined]

from moderator.errors import ModeratorError
from moderator.ingest.topics import ExistingTopic, TopicSpec, differences
from moderator.settings import KafkaSettings

_METADATA_RETRY_S = 0.2
_CONTROLLER_CHECKS = 3  # metadata reads, a second apart, before a cluster is called controller-less


class TopicAdminError(ModeratorError):
    """The cluster cannot be reached or does not answer topic administration (exit 1)."""


@dataclass(frozen=True)
class TopicOutcome:
    spec: TopicSpec
    status: str  # created | would create | exists | differs | failed
    details: tuple[str, ...] = ()  # the differences, or the cluster's reason for failed


def ensure_topics(
    admin: Any, specs: list[TopicSpec], *, timeout_s: float, dry_run: bool = False
) -> list[TopicOutcome]:
    """Make every spec'd topic exist, in this order:

    1. read the cluster's metadata within `timeout_s` (TopicAdminError when unreachable);
    2. refuse a cluster that names no live controller (the embedded mock cluster: it answers
       neither CreateTopics nor DescribeConfigs), rather than waiting for it;
    3. create the missing topics (`dry_run`: only validated by the cluster); a topic created
       meanwhile by someone else counts as existing, once the metadata shows it;
    4. describe the existing topics' configs and report how each differs from its spec.

    Returns one outcome per spec, in order. A topic the cluster refuses to create is `failed`
    with the cluster's reason; the others are still created.
    """
    metadata = _metadata(admin, timeout_s)
    existing = set(metadata.topics)
    outcomes: dict[str, TopicOutcome] = {}
    missing = [s for s in specs if s.name not in existing]
    raced = _create(admin, missing, timeout_s, dry_run, outcomes)
    present = [s for s in specs if s.name in existing or s.name in raced]
    if raced:
        metadata = _await_metadata(admin, raced, timeout_s)
    for spec in present:
        found = _existing(admin, metadata.topics[spec.name], spec.name, timeout_s)
        diff = differences(spec, found)
        outcomes[spec.name] = TopicOutcome(spec, "differs" if diff else "exists", tuple(diff))
    return [outcomes[s.name] for s in specs]


def broker_warnings(admin: Any, kafka: KafkaSettings, *, timeout_s: float) -> list[str]:
    """Broker settings that would make the service fail: a `transaction.max.timeout.ms` below
    `kafka.transaction_timeout_ms` (exactly-once producers are then refused at start-up)."""
    if kafka.delivery != "exactly_once":
        return []
    metadata = _metadata(admin, timeout_s)
    broker = str(min(metadata.brokers))
    configs = _describe(admin, ConfigResource("BROKER", broker), timeout_s)
    most = configs.get("transaction.max.timeout.ms")
    if most is not None and most.isdigit() and int(most) < kafka.transaction_timeout_ms:
        return [
            f"broker {broker}: transaction.max.timeout.ms is {most}, below "
            f"kafka.transaction_timeout_ms {kafka.transaction_timeout_ms}: transactional "
            "producers will be refused"
        ]
    return []


def _metadata(admin: Any, timeout_s: float) -> Any:
    for attempt in range(_CONTROLLER_CHECKS):
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise TopicAdminError(
                f"kafka: cannot reach the cluster within {timeout_s:g} s "
                f"(kafka.startup_timeout_s): {_reason(exc)}"
            ) from exc
        if metadata.controller_id in metadata.brokers:
            return metadata
        if attempt + 1 < _CONTROLLER_CHECKS:
            time.sleep(1.0)
    raise TopicAdminError(
        f"kafka: the cluster names no live controller (controller id {metadata.controller_id}, "
        f"brokers {sorted(metadata.brokers)}), so it cannot create or describe topics; the "
        "embedded mock cluster is like that: it creates topics on first use, with 4 partitions"
    )


def _await_metadata(admin: Any, names: set[str], timeout_s: float) -> Any:
    """Metadata showing `names`: a topic just created (by another client, or a moment ago)
    exists for the controller before the brokers' metadata shows it."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = _metadata(admin, timeout_s)
        unseen = sorted(names - set(metadata.topics))
        if not unseen:
            return metadata
        if time.monotonic() > deadline:
            raise TopicAdminError(
                f"kafka: topic {unseen[0]} exists, but the cluster's metadata did not show it "
                f"within {timeout_s:g} s (kafka.startup_timeout_s)"
            )
        time.sleep(_METADATA_RETRY_S)


def _create(
    admin: Any,
    specs: list[TopicSpec],
    timeout_s: float,
    dry_run: bool,
    outcomes: dict[str, TopicOutcome],
) -> set[str]:
    """Create `specs`, filling `outcomes`; the names someone else created meanwhile."""
    if not specs:
        return set()
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.configs)) for s in specs
    ]
    futures = admin.create_topics(
        new, operation_timeout=timeout_s, request_timeout=timeout_s, validate_only=dry_run
    )
    raced = set()
    for spec in specs:
        try:
            futures[spec.name].result()
        except KafkaException as exc:
            code = _code(exc)
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                raced.add(spec.name)
                continue
            if code == KafkaError._TIMED_OUT:
                raise _no_answer("CreateTopics", timeout_s) from exc
            outcomes[spec.name] = TopicOutcome(spec, "failed", (_reason(exc),))
            continue
        outcomes[spec.name] = TopicOutcome(spec, "would create" if dry_run else "created")
    return raced


def _existing(admin: Any, topic: Any, name: str, timeout_s: float) -> ExistingTopic:
    partitions = topic.partitions.values()
    return ExistingTopic(
        partitions=len(partitions),
        replication_factor=max((len(p.replicas) for p in partitions), default=0),
        configs=_describe(admin, ConfigResource("TOPIC", name), timeout_s),
    )


def _describe(admin: Any, resource: Any, timeout_s: float) -> dict[str, str]:
    futures = admin.describe_configs([resource], request_timeout=timeout_s)
    try:
        entries = next(iter(futures.values())).result()
    except KafkaException as exc:
        if _code(exc) == KafkaError._TIMED_OUT:
            raise _no_answer("DescribeConfigs", timeout_s) from exc
        raise TopicAdminError(
            f"kafka: cannot describe the configs of {resource.name}: {_reason(exc)}"
        ) from exc
    return {k: e.value for k, e in entries.items() if e.value is not None}


def _no_answer(request: str, timeout_s: float) -> TopicAdminError:
    return TopicAdminError(
        f"kafka: the cluster did not answer {request} within {timeout_s:g} s "
        "(kafka.startup_timeout_s); the embedded mock cluster never does"
    )


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    return " ".join(str(text).split())
