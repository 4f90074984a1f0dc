"""The audit store's data types: what goes in, what comes out, chain heads and anchors. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from moderator.audit.errors import InvalidQuery
from moderator.audit.fields import MalformedRecord, RecordFields, parse_time

ANCHOR_SCHEMA = "moderator.audit-anchor/v1"
Sort = Literal["decided_at", "-decided_at"]
MAX_LIMIT = 1000
# The times a query may name: SQLite keeps times as text with a four-digit year, so that text
# order is time order only from the year 1000 on.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
MAX_TEXT = 1024
"""Characters of one text filter value (an S3 object key is at most 1024 bytes)."""


def text_problem(value: str, max_chars: int = MAX_TEXT) -> str | None:
    """Why `value` cannot be compared with a stored text column, or None: PostgreSQL text holds
    no NUL character, and neither database takes a lone surrogate (undecodable command-line
    bytes)."""
    if not value:
        return "must not be empty"
    if len(value) > max_chars:
        return f"longer than {max_chars} characters"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


@dataclass(frozen=True)
class IncomingRecord:
    """One message of the audit topic: where it came from and its parsed AuditRecord JSON."""

    topic: str
    partition: int
    offset: int
    record: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    """An incoming record that was not stored, and why (the rest of its batch was)."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True)
class InsertResult:
    inserted: int = 0
    duplicates: int = 0  # event_id already stored, or repeated within the batch
    conflicts: int = 0  # duplicates whose record differs from the stored one (first one wins)
    policy_versions_added: int = 0
    policy_hash_mismatches: int = 0  # policy_document did not hash to policy_hash: not kept
    rejected: tuple[Rejected, ...] = ()


class AuditWriter(Protocol):
    """What the audit sink needs from the store."""

    def insert(self, items: Sequence[IncomingRecord]) -> InsertResult: ...


@dataclass(frozen=True)
class AuditQuery:
    """Filters (all optional, combined with AND), order and page. The filters are the fields of
    `audit.read.filters.FILTERS`, by the same names, which say what each matches (`tenant` is the
    tenant_id column, `bucket` object_bucket). `since` is inclusive and `until` exclusive.
    `category` is a code (`O4`) or the full string; `model` is an engine or `engine:name`;
    `policy_version` is the 16-hex version or the full 64-hex policy hash; `error` is the
    error code (column error_code)."""

    tenant: str | None = None
    event_id: str | None = None
    bucket: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    decision: str | None = None
    category: str | None = None
    policy_version: str | None = None
    model: str | None = None
    error: str | None = None
    source: str | None = None
    surface: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    sort: Sort = "-decided_at"
    limit: int = 100
    cursor: str | None = None
    # Access scope (the HTTP API's per-tenant tokens): rows of these tenants only; an empty
    # tuple matches nothing. None: no restriction. Combined with `tenant` like any filter.
    tenant_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}, got {self.limit}")
        if self.sort not in ("decided_at", "-decided_at"):
            raise InvalidQuery(f"sort must be decided_at or -decided_at, got {self.sort!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidQuery(f"{name} must be timezone-aware")
        if self.model is not None and not self.model.split(":", 1)[0]:
            raise InvalidQuery(f"model must be ENGINE or ENGINE:NAME, got {self.model!r}")


@dataclass(frozen=True)
class AuditRow:
    """One stored audit record: its chain position, indexed columns and the record itself
    (None once redacted)."""

    id: int
    topic: str
    partition: int
    offset: int
    seq: int
    event_id: str
    tenant_id: str
    decided_at: datetime
    decision: str
    object_bucket: str | None
    object_key: str | None
    sha256: str | None
    rating: str | None
    category: str | None
    category_code: str | None
    score: float | None
    policy_version: str | None
    policy_hash: str | None
    model_engine: str | None
    model_name: str | None
    model_smoke_test: bool | None
    error_code: str | None
    source: str | None
    surface: str | None
    record_hash: str
    # Not for API items: it covers the offset, which a small search would recover from it.
    columns_hash: str | None  # None on rows written before schema version 3
    prev_hash: str
    row_hash: str
    redacted_at: datetime | None
    record: dict[str, Any] | None


@dataclass(frozen=True)
class Page:
    rows: list[AuditRow]
    next_cursor: str | None  # None: no more rows


@dataclass(frozen=True, order=True)
class ChainHead:
    """The last row of one (topic, partition) chain."""

    topic: str
    partition: int
    seq: int
    row_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "seq": self.seq,
            "row_hash": self.row_hash,
        }


@dataclass(frozen=True)
class ChainRow:
    """What `verify` reads of one row, in seq order. `record` has its policy document restored;
    `fields` are the stored indexed columns."""

    id: int
    seq: int
    record_hash: str
    prev_hash: str
    row_hash: str
    record: dict[str, Any] | None
    redacted_at: datetime | None
    policy_elided: bool  # the record's policy_document came back from policy_versions
    fields: RecordFields
    offset: int = 0  # the audit topic offset
    columns_hash: str | None = None  # None: a row written in chain format v1
    unreadable: str | None = None  # a stored value no writer produces (an edit), as read


@dataclass(frozen=True)
class Anchor:
    """Exported chain heads: what `verify` holds the database to."""

    created_at: datetime
    heads: tuple[ChainHead, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ANCHOR_SCHEMA,
            "created_at": self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "heads": [head.to_json() for head in sorted(self.heads)],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, doc: Any) -> Anchor:
        """Parse an anchor document; raise ValueError when it is not one."""
        if not isinstance(doc, dict) or doc.get("schema") != ANCHOR_SCHEMA:
            raise ValueError(f"not a {ANCHOR_SCHEMA} document")
        try:
            heads = tuple(
                ChainHead(str(h["topic"]), int(h["partition"]), int(h["seq"]), str(h["row_hash"]))
                for h in doc["heads"]
            )
            return cls(created_at=parse_time(doc["created_at"]), heads=heads)
        except (KeyError, TypeError, MalformedRecord) as exc:
            raise ValueError(f"invalid anchor: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> Anchor:
        return cls.from_json(json.loads(data))
