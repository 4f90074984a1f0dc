"""`moderator topics create`, and the same at `moderator run` start-up (kafka.create_topics)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from moderator.cli.style import add_command, add_config_flag, add_group, examples
from moderator.errors import ConfigError, ModeratorError
from moderator.settings import Settings

if TYPE_CHECKING:
    from moderator.ingest.topic_admin import TopicOutcome

log = structlog.get_logger("moderator.topics")
_SILENT = logging.getLogger("moderator.kafka.admin")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False

DESCRIPTION = (
    "Create the service's topics (kafka.topics.*) with the partitions, replication factor and "
    "configs of kafka.topic_specs.*. Existing topics are left as they are; where one differs "
    "from its spec (partitions, replication factor, a config the spec sets) a warning names the "
    "topic and both values. Prints topic, partitions, replication, configs and status (created, "
    "exists, differs, would create, failed). Exit 0 when every topic exists, 1 when the cluster "
    "cannot be reached within kafka.startup_timeout_s, does not answer topic administration, or "
    "refuses a topic, 2 on a configuration error."
)


def add_topics_parser(sub: Any) -> None:
    topics_sub = add_group(
        sub,
        "topics",
        help="create and check the service's Kafka topics",
        description=(
            "The service's five topics (kafka.topics.*: uploads, verdicts, audit, dlq, replay) "
            "and their specs (kafka.topic_specs.*: partitions, replication factor, configs)."
        ),
        epilog=examples("moderator topics create --config settings.yaml --dry-run"),
        dest="topics_command",
    )
    create = add_command(
        topics_sub,
        "create",
        help="create missing topics from kafka.topic_specs",
        description=DESCRIPTION,
        epilog=examples(
            "moderator topics create --config settings.yaml",
            "moderator topics create --dry-run",
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 moderator topics create",
        ),
    )
    add_config_flag(create)
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: the cluster only validates the topics it would create",
    )


def cmd_topics_create(config: Path | None, *, dry_run: bool, debug: bool) -> int:
    from moderator.ingest.topic_admin import broker_warnings, ensure_topics
    from moderator.ingest.topics import topic_specs
    from moderator.settings import load_settings

    settings = load_settings(config, {})
    specs = topic_specs(settings.kafka)
    admin = admin_client(settings, quiet=not debug)  # a configuration librdkafka refuses: exit 2
    reach_cluster(settings)
    timeout_s = settings.kafka.startup_timeout_s
    outcomes = ensure_topics(admin, specs, timeout_s=timeout_s, dry_run=dry_run)
    rows = [_row(o) for o in outcomes]
    print(_table(("topic", "partitions", "replication", "configs", "status"), rows))
    for line in broker_warnings(admin, settings.kafka, timeout_s=timeout_s) + [
        d for o in outcomes if o.status == "differs" for d in o.details
    ]:
        print(f"moderator: warning: {line}", file=sys.stderr)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = "; ".join(f"{o.spec.name}: {o.details[0]}" for o in failed)
        raise ModeratorError(f"kafka: {len(failed)} topic(s) refused by the cluster: {reasons}")
    return 0


def ensure_at_startup(settings: Settings) -> None:
    """`moderator run` with kafka.create_topics: create what is missing, log what differs;
    ModeratorError (exit 1) when a topic cannot be created."""
    from moderator.ingest.topic_admin import broker_warnings, ensure_topics
    from moderator.ingest.topics import topic_specs

    specs = topic_specs(settings.kafka)
    admin = admin_client(settings, quiet=False)
    timeout_s = settings.kafka.startup_timeout_s
    outcomes = ensure_topics(admin, specs, timeout_s=timeout_s)
    for warning in broker_warnings(admin, settings.kafka, timeout_s=timeout_s):
        log.warning("kafka_broker_config", problem=warning)
    for o in outcomes:
        if o.status == "differs":
            log.warning("topic_differs", topic=o.spec.name, differences=list(o.details))
        elif o.status == "created":
            log.info("topic_created", topic=o.spec.name, partitions=o.spec.partitions)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise ModeratorError(
            f"kafka: topic {failed[0].spec.name} not created: {failed[0].details[0]}"
        )


def reach_cluster(settings: Settings) -> None:
    """`moderator run`'s start-up probe (the servers, each broker's reason, the settings to
    check); TopicAdminError (exit 1) when no broker answers within kafka.startup_timeout_s."""
    from moderator.ingest.startup import probe_cluster
    from moderator.ingest.topic_admin import TopicAdminError

    try:
        probe_cluster(settings.kafka, client_id=f"moderator-admin-{settings.instance_id}")
    except ConfigError as exc:  # the configuration itself passed admin_client: unreachable
        raise TopicAdminError(str(exc)) from exc


def admin_client(settings: Settings, *, quiet: bool) -> Any:
    """An AdminClient for the settings; `quiet` keeps librdkafka's own connection errors off
    stderr (the command reports the outcome in one line)."""
    import confluent_kafka.admin

    from moderator.ingest.kafka import build_client

    conf = settings.kafka.client_config()
    conf["client.id"] = f"moderator-admin-{settings.instance_id}"
    if quiet:
        conf["logger"] = _SILENT
    return build_client(confluent_kafka.admin.AdminClient, conf, settings.kafka)


def _row(o: TopicOutcome) -> tuple[str, ...]:
    spec = o.spec
    return (
        spec.name,
        str(spec.partitions),
        str(spec.replication_factor),
        spec.configs_text(),
        o.status,
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])
