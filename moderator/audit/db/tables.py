"""The audit database's current schema (SQLAlchemy Core), one definition for SQLite and
PostgreSQL. `migrations.py` brings older databases up to it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

_SQLITE_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC instant. PostgreSQL: `timestamp with time zone`. SQLite: fixed-width
    ISO 8601 text (`2026-11-29T02:00:01.234000Z`), so text order is time order and range
    queries and sorting behave as on PostgreSQL. Naive datetimes are refused."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(27))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.strftime(_SQLITE_FORMAT) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.strptime(value, _SQLITE_FORMAT).replace(tzinfo=UTC)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


def stored_time(value: Any) -> datetime | None:
    """A timestamp as the database returned it without `UtcDateTime`'s conversion (text on
    SQLite, a datetime on PostgreSQL), held to what `UtcDateTime` writes: `ValueError` for
    anything else (SQLite keeps whatever text it is given; text order must stay time order)."""
    if value is None or isinstance(value, datetime):
        return None if value is None else value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError(f"{type(value).__name__} where a timestamp belongs")
    try:
        parsed = datetime.strptime(value, _SQLITE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        parsed = None
    if parsed is None or parsed.strftime(_SQLITE_FORMAT) != value:
        raise ValueError(f"{value[:40]!r} is not a timestamp as the store writes them")
    return parsed


# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid).
_Id = BigInteger().with_variant(Integer(), "sqlite")
_Hash = String(64)

metadata = MetaData()

audit_records = Table(
    "audit_records",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # Chain position: the audit topic's partition and the 1-based, contiguous seq within it.
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    # Indexed columns, derived from the record (fields.record_fields).
    Column("event_id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("decided_at", UtcDateTime, nullable=False),
    Column("object_bucket", String),
    Column("object_key", String),  # cleared on redaction (may hold personal data)
    Column("sha256", String),
    Column("decision", String, nullable=False),
    Column("rating", String),
    Column("category", String),
    Column("category_code", String),  # "O4" for "O4: Nudity Content": serves both filter forms
    Column("score", Double),
    Column("policy_version", String),
    Column("policy_hash", _Hash),
    Column("model_engine", String),
    Column("model_name", String),
    Column("model_smoke_test", Boolean),
    Column("error_code", String),
    Column("source", String),
    Column("surface", String),
    # The record's canonical JSON, NULL once redacted. When `policy_elided`, its policy_document
    # was moved to policy_versions (identical bytes, kept once) and is put back on read.
    Column("record", Text),
    Column("policy_elided", Boolean, nullable=False, default=False),
    Column("record_hash", _Hash, nullable=False),
    # canonical.columns_hash of the columns redaction keeps, covered by row_hash (chain format
    # v2, migration 3); NULL on rows written before, whose row_hash is format v1.
    Column("columns_hash", _Hash),
    Column("prev_hash", _Hash, nullable=False),
    Column("row_hash", _Hash, nullable=False),
    Column("redacted_at", UtcDateTime),
    UniqueConstraint("event_id", name="uq_audit_records_event_id"),
    UniqueConstraint("topic", "partition", "seq", name="uq_audit_records_chain"),
    Index("ix_audit_records_tenant_time", "tenant_id", "decided_at", "id"),
    Index("ix_audit_records_time", "decided_at", "id"),
    # Keyset order by (time, event id), stable across databases and copies (migration 3).
    Index("ix_audit_records_tenant_time_event", "tenant_id", "decided_at", "event_id"),
    Index("ix_audit_records_time_event", "decided_at", "event_id"),
    # Lookups by key or content hash are ordered by time: with the order in the index the
    # planner never scans the time index backwards hoping to meet the key (migration 2).
    Index("ix_audit_records_object_key_time", "object_key", "decided_at", "id"),
    Index("ix_audit_records_sha256_time", "sha256", "decided_at", "id"),
    Index("ix_audit_records_decision", "decision"),
    Index("ix_audit_records_category", "category_code"),
    Index("ix_audit_records_policy_version", "policy_version"),
    Index("ix_audit_records_model", "model_engine", "model_name"),
)

chain_heads = Table(
    "chain_heads",
    metadata,
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("row_hash", _Hash, nullable=False),
    PrimaryKeyConstraint("topic", "partition", name="pk_chain_heads"),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("policy_hash", _Hash, primary_key=True),
    Column("tenant_id", String),
    Column("version", String),
    # The exact bytes (UTF-8 JSON) whose SHA-256 is policy_hash: prompt, decision table, locations.
    Column("document", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Index("ix_policy_versions_tenant_version", "tenant_id", "version"),
)

anchors = Table(
    "anchors",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("heads", Text, nullable=False),  # JSON list of {topic, partition, seq, row_hash}
    Column("destination", String, nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

# Rows inserted without columns_hash (chain format v1) are refused: only a writer older than
# schema version 3 makes one, and `audit verify` would report it after format v2 rows as a
# downgrade. Such a writer (a sink that opened the store before it was migrated) gets an
# integrity error and stops, its records left on the audit topic. Updates are not checked:
# retention redacts rows stored in format v1. Created with the table, or by migration 4.
FORMAT_V2_ONLY = "audit_records_format_v2_only"
_REFUSAL = "audit_records: a row without columns_hash: its writer predates schema version 3"
FORMAT_V2_DDL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        f"CREATE TRIGGER {FORMAT_V2_ONLY} BEFORE INSERT ON audit_records "
        f"WHEN NEW.columns_hash IS NULL BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END",
    ),
    "postgresql": (
        f"CREATE OR REPLACE FUNCTION {FORMAT_V2_ONLY}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        f"IF NEW.columns_hash IS NULL THEN RAISE EXCEPTION '{_REFUSAL}' "
        "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
        f"CREATE TRIGGER {FORMAT_V2_ONLY} BEFORE INSERT ON audit_records "
        f"FOR EACH ROW EXECUTE FUNCTION {FORMAT_V2_ONLY}()",
    ),
}


def _format_v2_only(target: Table, connection: Any, **_: Any) -> None:
    for statement in FORMAT_V2_DDL.get(connection.dialect.name, ()):
        connection.exec_driver_sql(statement)


event.listen(audit_records, "after_create", _format_v2_only)
