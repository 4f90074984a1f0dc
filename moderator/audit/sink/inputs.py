"""What the audit sink reads: its consumer's settings, the parsed values, a batch, stats."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import confluent_kafka

from moderator.audit.models import IncomingRecord
from moderator.ingest.kafka import build_client, consumer_config
from moderator.ingest.ports import Consumer
from moderator.settings import Settings

TP = tuple[str, int]
AUDIT_SCHEMA = "moderator.audit/v1"


def sink_group_id(settings: Settings) -> str:
    return settings.audit.sink_group_id or f"{settings.kafka.group_id}-audit-sink"


def sink_consumer_config(settings: Settings) -> dict[str, Any]:
    """The service's consumer settings under the sink's own group, always a dynamic member
    (`kafka.static_membership` is the service consumer's); the three delivery-critical
    properties are set here explicitly although consumer_config already has them."""
    conf = consumer_config(settings)
    conf.pop("group.instance.id", None)
    conf.update(
        {
            "group.id": sink_group_id(settings),
            "client.id": f"moderator-audit-sink-{settings.instance_id}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    return conf


def make_sink_consumer(settings: Settings) -> Consumer:
    conf = sink_consumer_config(settings)
    return cast(Consumer, build_client(confluent_kafka.Consumer, conf, settings.kafka))


def parse_value(value: bytes | None) -> dict[str, Any]:
    """The AuditRecord JSON as published; ValueError when the value is not one.

    Only the schema tag is checked here; the store validates the fields it indexes (and returns
    the failures as `rejected`). The record is stored and hashed exactly as received, so fields
    a newer producer adds are kept rather than refused.
    """
    if not value:
        raise ValueError("empty value")
    doc = json.loads(value)
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object but {type(doc).__name__}")
    if doc.get("schema") != AUDIT_SCHEMA:
        raise ValueError(f"schema is {doc.get('schema')!r}, not {AUDIT_SCHEMA!r}")
    return doc


@dataclass
class SinkStats:
    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0  # duplicates whose record differs from the stored one
    skipped: int = 0  # malformed or not an AuditRecord: logged with coordinates, never stored
    batches: int = 0
    retries: int = 0  # insert attempts that failed on a database outage
    commit_failures: int = 0
    abandoned: int = 0  # batches left uncommitted at shutdown (redelivered to the next run)
    anchors: int = 0
    anchor_failures: int = 0


@dataclass
class Batch:
    """One consume's records and the offsets to commit once they are stored."""

    items: list[IncomingRecord] = field(default_factory=list)
    next_offsets: dict[TP, int] = field(default_factory=dict)  # last consumed + 1

    def drop(self, tps: set[TP]) -> None:
        self.items = [i for i in self.items if (i.topic, i.partition) not in tps]
        for tp in tps:
            self.next_offsets.pop(tp, None)
