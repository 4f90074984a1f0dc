"""Records not stored because their event id already has a row with a different record. Pure.

The store keeps one row per event id and the first one stored wins (docs/audit.md). A repeat
with the same record is a redelivery (a `duplicate`); a repeat with a different record is a
`Conflict`, and its kind says what differs from the row that was kept:

- `tenant`: another tenant's record under the same event id. The kept row belongs to the first
  tenant, and the other tenant's verdict has no audit record: its token answers 404 for it.
- `object`: the same tenant, another object (bucket or key): two uploads under one event id.
- `record`: the same tenant and object, another record: the event was decided again (after a
  crash in `at_least_once` mode the service re-decides the events in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moderator.audit.fields import RecordFields
from moderator.audit.models import IncomingRecord, InsertResult

ConflictKind = Literal["tenant", "object", "record"]
KINDS: tuple[ConflictKind, ...] = ("tenant", "object", "record")


@dataclass(frozen=True)
class Kept:
    """What a repeat of an event id is compared with: the row stored (or about to be stored)
    for it."""

    tenant_id: str
    object_bucket: str | None
    object_key: str | None  # None once redacted
    record_hash: str

    @classmethod
    def of(cls, fields: RecordFields, record_hash: str) -> Kept:
        return cls(fields.tenant_id, fields.object_bucket, fields.object_key, record_hash)


@dataclass(frozen=True)
class Conflict:
    """A record not stored: its event id's row holds a different record, `stored_tenant`'s.
    `topic`, `partition` and `offset` are where the dropped record is on the audit topic."""

    kind: ConflictKind
    event_id: str
    stored_tenant: str
    tenant: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class WriteResult(InsertResult):
    """`InsertResult` with every conflict of the batch (`conflicts` counts them), in audit
    topic order."""

    conflicted: tuple[Conflict, ...] = ()


def conflict(
    kept: Kept, item: IncomingRecord, fields: RecordFields, record_hash: str
) -> Conflict | None:
    """The conflict of a repeated event id with the row kept for it; None for a redelivery of
    the same record. A redacted row has lost its object key: only its bucket is compared."""
    if record_hash == kept.record_hash:
        return None
    kind: ConflictKind = "record"
    if fields.tenant_id != kept.tenant_id:
        kind = "tenant"
    elif fields.object_bucket != kept.object_bucket or (
        kept.object_key is not None and fields.object_key != kept.object_key
    ):
        kind = "object"
    return Conflict(
        kind,
        fields.event_id,
        kept.tenant_id,
        fields.tenant_id,
        item.topic,
        item.partition,
        item.offset,
    )


def by_kind(conflicts: tuple[Conflict, ...]) -> dict[ConflictKind, int]:
    """How many conflicts of each kind (every kind, zeros included)."""
    counts = dict.fromkeys(KINDS, 0)
    for found in conflicts:
        counts[found.kind] += 1
    return counts
