"""The original verdicts a replay compares against: from the audit store, or from the topic.

With `audit.url` set, each original is the audit row of the event id (its stored record when it
still has one; after retention's redaction, the row's indexed columns). Without it, the verdicts
topic is read once from its earliest offset to its end at the start, keeping a compact copy of
each verdict (the last one of an event id wins, as a redelivered event's verdict repeats it).
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from confluent_kafka import OFFSET_BEGINNING

from moderator.ingest.offsets import partitions_of, read_until, watermarks_of

if TYPE_CHECKING:
    from moderator.audit.db.store import AuditStore
    from moderator.audit.models import AuditRow

log = structlog.get_logger("moderator.replay")

# What a comparison needs of a verdict; the rest (timings, trace) is left out to save memory.
KEPT = ("event_id", "tenant_id", "object", "decision", "assessment", "policy", "model", "error")


class Originals(Protocol):
    source: str  # for the report: where the originals came from

    def get(self, event_id: str) -> dict[str, Any] | None: ...


class AuditOriginals:
    """Originals from the audit store (thread-safe: one lookup at a time)."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.source = f"audit store ({store.dialect})"

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._store.get(event_id)
        return None if row is None else verdict_of_row(row)


class TopicOriginals:
    """Originals read from the verdicts topic at the start of the run."""

    def __init__(self, verdicts: dict[str, dict[str, Any]], topic: str) -> None:
        self._verdicts = verdicts
        self.source = f"topic {topic}"

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self._verdicts.get(event_id)

    @classmethod
    def read(cls, consumer: Any, topic: str, *, timeout_s: float) -> TopicOriginals:
        """Read `topic` from its earliest offset to its end now. `consumer` is assigned the
        topic and left unassigned afterwards."""
        partitions = partitions_of(consumer, topic, timeout_s)
        marks = {p: watermarks_of(consumer, topic, p, timeout_s) for p in partitions}
        ends = {p: high for p, (low, high) in marks.items() if high > low}  # others are empty
        starts = dict.fromkeys(ends, OFFSET_BEGINNING)
        verdicts: dict[str, dict[str, Any]] = {}
        for msg in read_until(consumer, topic, starts, ends):
            kept = compact(msg.value()) if msg.value() else None
            if kept is not None:
                verdicts[kept["event_id"]] = kept
        log.info("originals_read", topic=topic, verdicts=len(verdicts))
        return cls(verdicts, topic)


def compact(value: bytes) -> dict[str, Any] | None:
    """The kept fields of one verdict message; None for anything that is not a verdict."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # nested past the parser's limit: not a verdict either
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event_id"), str):
        return None
    return {k: data.get(k) for k in KEPT}


def verdict_of_row(row: AuditRow) -> dict[str, Any]:
    """The verdict of an audit row: from its record, or (redacted) from its columns."""
    record = row.record
    if record is not None and isinstance(record.get("verdict"), dict):
        verdict = record["verdict"]
        return {k: verdict.get(k) for k in KEPT}
    assessment = (
        {"rating": row.rating, "category": row.category, "rationale": "", "score": row.score}
        if row.rating is not None and row.category is not None
        else None
    )
    return {
        "event_id": row.event_id,
        "tenant_id": row.tenant_id,
        "object": {"bucket": row.object_bucket or "", "key": row.object_key or ""},
        "decision": row.decision,
        "assessment": assessment,
        "policy": {
            "tenant_id": row.tenant_id,
            "surface": row.surface,
            "version": row.policy_version,
        },
        "model": (
            {"engine": row.model_engine, "name": row.model_name} if row.model_engine else None
        ),
        "error": {"code": row.error_code, "message": ""} if row.error_code else None,
    }
