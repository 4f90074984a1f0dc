"""Direct database edits for the audit verify tests (SQLite and PostgreSQL): what an attacker
with write access does, and what an audit database written before schema version 3 looks like."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from moderator.audit.chain.canonical import (
    GENESIS_HASH,
    CanonicalizationError,
    columns_hash,
    link_hash,
    record_hash,
)
from moderator.audit.db.store import AuditStore
from moderator.audit.db.tables import FORMAT_V2_ONLY, audit_records, chain_heads, schema_migrations

R = audit_records.c
V3_INDEXES = ("ix_audit_records_tenant_time_event", "ix_audit_records_time_event")
_ON = {"sqlite": "", "postgresql": " ON audit_records"}  # DROP TRIGGER's syntax differs


def fake_redaction(conn: Connection, event_id: str, /, **columns: Any) -> None:
    """Make a row look redacted by retention, and change `columns` on the way."""
    conn.execute(
        update(audit_records)
        .where(R.event_id == event_id)
        .values(record=None, object_key=None, redacted_at=datetime(2027, 1, 1, tzinfo=UTC))
        .values(**columns)
    )


def recompute_chain(engine: Engine, store: AuditStore, topic: str, partition: int) -> None:
    """Make every hash of one chain agree with what its rows now hold (records, kept columns),
    and move its recorded head: the wholesale rewrite only an exported anchor can catch."""
    rows = list(store.iter_chain(topic, partition))  # records with policy documents restored
    prev = GENESIS_HASH
    with engine.begin() as conn:
        for row in rows:
            try:
                rh = record_hash(row.record) if row.record is not None else row.record_hash
            except CanonicalizationError:  # a record no writer stores keeps its old hash
                rh = row.record_hash
            ch = columns_hash({**row.fields.columns(), "offset": row.offset})
            new = link_hash(prev, rh, row.seq, topic, partition, ch)
            conn.execute(
                update(audit_records)
                .where(R.id == row.id)
                .values(record_hash=rh, columns_hash=ch, prev_hash=prev, row_hash=new)
            )
            prev = new
        _move_head(conn, topic, partition, prev)


def write_as_format_v1(conn: Connection, topic: str, partition: int) -> None:
    """Rewrite one chain as moderator stored it before schema version 3: no columns_hash, and
    row hashes of chain format v1."""
    prev = GENESIS_HASH
    rows = conn.execute(
        select(R.id, R.seq, R.record_hash)
        .where(R.topic == topic, R.partition == partition)
        .order_by(R.seq)
    ).all()
    for row in rows:
        new = link_hash(prev, row.record_hash, row.seq, topic, partition)
        conn.execute(
            update(audit_records)
            .where(R.id == row.id)
            .values(columns_hash=None, prev_hash=prev, row_hash=new)
        )
        prev = new
    _move_head(conn, topic, partition, prev)


def revert_to_version_2(engine: Engine) -> None:
    """Give a current audit database the shape of schema version 2 (its rows must already be
    in chain format v1: `write_as_format_v1`)."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TRIGGER {FORMAT_V2_ONLY}" + _ON[conn.dialect.name]))
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"DROP FUNCTION {FORMAT_V2_ONLY}()"))
        for name in V3_INDEXES:
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(text("ALTER TABLE audit_records DROP COLUMN columns_hash"))
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version > 2))


def _move_head(conn: Connection, topic: str, partition: int, row_hash: str) -> None:
    conn.execute(
        update(chain_heads)
        .where(chain_heads.c.topic == topic, chain_heads.c.partition == partition)
        .values(row_hash=row_hash)
    )
