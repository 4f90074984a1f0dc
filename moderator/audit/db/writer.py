"""Inserting audit records: idempotent by event_id, chained per (topic, partition), one
transaction per batch. Hashing and column extraction happen before the transaction starts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, and_, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from moderator.audit.chain.canonical import (
    GENESIS_HASH,
    CanonicalizationError,
    canonical_json,
    columns_hash,
    link_hash,
    policy_document_bytes,
    sha256_hex,
)
from moderator.audit.chain.jcs import Raw
from moderator.audit.db.conflicts import Kept, WriteResult, conflict
from moderator.audit.db.tables import audit_records, chain_heads, policy_versions
from moderator.audit.fields import MalformedRecord, RecordFields, record_fields
from moderator.audit.models import IncomingRecord, Rejected

IN_CHUNK = 500  # bound on bind parameters per IN (...) list
CANON_CACHE = 64  # policy documents kept serialised between batches


@dataclass(frozen=True)
class Prepared:
    """One incoming record, validated and hashed, ready for a chain position."""

    item: IncomingRecord
    fields: RecordFields
    record_hash: str
    columns_hash: str  # of the kept columns and the offset: bound into row_hash
    stored: str  # canonical JSON as stored (policy_document removed when `policy_doc` is set)
    policy_doc: bytes | None  # the document's bytes whose sha256 is fields.policy_hash


@dataclass
class Batch:
    """The outcome of preparing a batch: unique records in chain order, and what was dropped
    (`repeats`: event ids already earlier in the batch, compared with the kept row on write)."""

    records: list[Prepared] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    repeats: list[Prepared] = field(default_factory=list)
    policy_mismatches: int = 0


def prepare(items: Sequence[IncomingRecord], canon_cache: dict[str, bytes] | None = None) -> Batch:
    """Validate, hash and deduplicate within the batch (first occurrence wins); pure.

    `canon_cache` (policy_hash -> canonical JSON of its verified document) lets a long-lived
    caller serialise each policy document once rather than once per record.
    """
    cache = {} if canon_cache is None else canon_cache
    batch = Batch()
    seen: set[str] = set()
    for item in items:
        try:
            fields = record_fields(item.record)
            full, stored, doc = _serialize(item.record, fields, cache)
            kept = columns_hash({**fields.columns(), "offset": item.offset})
        except (MalformedRecord, CanonicalizationError, OverflowError) as exc:
            batch.rejected.append(Rejected(item.topic, item.partition, item.offset, str(exc)))
            continue
        prep = Prepared(item, fields, sha256_hex(full), kept, stored.decode("utf-8"), doc)
        if fields.event_id in seen:
            batch.repeats.append(prep)
            continue
        seen.add(fields.event_id)
        if isinstance(item.record.get("policy_document"), dict) and fields.policy_hash:
            batch.policy_mismatches += doc is None
        batch.records.append(prep)
    batch.records.sort(key=lambda p: (p.item.topic, p.item.partition, p.item.offset))
    return batch


def _serialize(
    record: dict[str, Any], fields: RecordFields, cache: dict[str, bytes]
) -> tuple[bytes, bytes, bytes | None]:
    """(canonical JSON of the whole record, what is stored, the policy document's bytes when
    it matches policy_hash and is therefore kept in policy_versions instead of the row)."""
    document = record.get("policy_document")
    doc = None
    if isinstance(document, dict) and fields.policy_hash:
        doc = policy_document_bytes(document, fields.policy_hash)
    if doc is None:
        full = canonical_json(record)
        return full, full, None
    rest = {k: v for k, v in record.items() if k != "policy_document"}
    assert fields.policy_hash is not None
    canon = cache.get(fields.policy_hash)
    if canon is None:
        if len(cache) >= CANON_CACHE:
            cache.clear()
        canon = cache[fields.policy_hash] = canonical_json(document)
    full = canonical_json({**rest, "policy_document": Raw(canon)})
    return full, canonical_json(rest), doc


def write_batch(conn: Connection, batch: Batch) -> WriteResult:
    """Store a prepared batch inside the caller's (write) transaction.

    Steps: lock the chain heads of every partition in the batch (SELECT ... FOR UPDATE on
    PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other writers), so that two sinks can
    never fork a chain; then skip event_ids already stored (read after the locks, so a
    concurrent sink's rows on the same partition are seen); link the rest onto their heads;
    insert rows (executemany), move the heads, and keep new policy versions. Every record not
    stored for its event id is held to the row kept for it (`conflicts.conflict`).
    """
    heads = _lock_heads(conn, sorted({(p.item.topic, p.item.partition) for p in batch.records}))
    kept = _stored_rows(conn, [p.fields.event_id for p in batch.records])
    dropped = list(batch.repeats)
    rows: list[dict[str, Any]] = []
    for prep in batch.records:
        if prep.fields.event_id in kept:
            dropped.append(prep)
            continue
        kept[prep.fields.event_id] = Kept.of(prep.fields, prep.record_hash)
        topic, partition = prep.item.topic, prep.item.partition
        seq, prev = heads[(topic, partition)]
        seq += 1
        row_hash = link_hash(prev, prep.record_hash, seq, topic, partition, prep.columns_hash)
        heads[(topic, partition)] = (seq, row_hash)
        rows.append(_row(prep, seq, prev, row_hash))
    if rows:
        conn.execute(audit_records.insert(), rows)
        moved = [
            {"b_topic": t, "b_partition": p, "b_seq": s, "b_hash": h}
            for (t, p), (s, h) in heads.items()
        ]
        conn.execute(
            update(chain_heads)
            .where(
                and_(
                    chain_heads.c.topic == bindparam("b_topic"),
                    chain_heads.c.partition == bindparam("b_partition"),
                )
            )
            .values(seq=bindparam("b_seq"), row_hash=bindparam("b_hash")),
            moved,
        )
    added = _keep_policies(conn, [p for p in batch.records if p.policy_doc is not None])
    dropped.sort(key=lambda p: (p.item.topic, p.item.partition, p.item.offset))
    conflicts = tuple(
        found
        for p in dropped
        if (found := conflict(kept[p.fields.event_id], p.item, p.fields, p.record_hash))
    )
    return WriteResult(
        inserted=len(rows),
        duplicates=len(dropped),
        conflicts=len(conflicts),
        policy_versions_added=added,
        policy_hash_mismatches=batch.policy_mismatches,
        rejected=tuple(batch.rejected),
        conflicted=conflicts,
    )


def _row(prep: Prepared, seq: int, prev: str, row_hash: str) -> dict[str, Any]:
    return {
        **prep.fields.columns(),
        "topic": prep.item.topic,
        "partition": prep.item.partition,
        "offset": prep.item.offset,
        "seq": seq,
        "record": prep.stored,
        "policy_elided": prep.policy_doc is not None,
        "record_hash": prep.record_hash,
        "columns_hash": prep.columns_hash,
        "prev_hash": prev,
        "row_hash": row_hash,
        "redacted_at": None,
    }


def insert_ignore(conn: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _lock_heads(
    conn: Connection, keys: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[int, str]]:
    if not keys:
        return {}
    conn.execute(
        insert_ignore(conn, chain_heads),
        [{"topic": t, "partition": p, "seq": 0, "row_hash": GENESIS_HASH} for t, p in keys],
    )
    heads: dict[tuple[str, int], tuple[int, str]] = {}
    for topic, partition in keys:  # one at a time, in a fixed order: no lock-order deadlocks
        row = conn.execute(
            select(chain_heads.c.seq, chain_heads.c.row_hash)
            .where(chain_heads.c.topic == topic, chain_heads.c.partition == partition)
            .with_for_update()
        ).one()
        heads[(topic, partition)] = (int(row.seq), str(row.row_hash))
    return heads


def _stored_rows(conn: Connection, event_ids: list[str]) -> dict[str, Kept]:
    t = audit_records.c
    found: dict[str, Kept] = {}
    for chunk in _chunks(event_ids):
        result = conn.execute(
            select(t.event_id, t.tenant_id, t.object_bucket, t.object_key, t.record_hash).where(
                t.event_id.in_(chunk)
            )
        )
        found.update(
            {
                str(r.event_id): Kept(r.tenant_id, r.object_bucket, r.object_key, r.record_hash)
                for r in result
            }
        )
    return found


def _keep_policies(conn: Connection, records: list[Prepared]) -> int:
    wanted: dict[str, Prepared] = {}
    for prep in records:
        assert prep.fields.policy_hash is not None
        wanted.setdefault(prep.fields.policy_hash, prep)
    have: set[str] = set()
    for chunk in _chunks(list(wanted)):
        have.update(
            conn.execute(
                select(policy_versions.c.policy_hash).where(
                    policy_versions.c.policy_hash.in_(chunk)
                )
            ).scalars()
        )
    added = 0
    now = datetime.now(UTC)
    for policy_hash, prep in wanted.items():
        if policy_hash in have:
            continue
        assert prep.policy_doc is not None
        # RETURNING, not rowcount: drivers report -1 for INSERT ... ON CONFLICT DO NOTHING.
        stmt = insert_ignore(conn, policy_versions).returning(policy_versions.c.policy_hash)
        row = {
            "policy_hash": policy_hash,
            "tenant_id": prep.fields.tenant_id,
            "version": prep.fields.policy_version,
            "document": prep.policy_doc.decode("utf-8"),
            "first_seen_at": now,
        }
        added += len(conn.execute(stmt, row).all())
    return added


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def restore_policy(stored: str, document: str | None) -> dict[str, Any]:
    """The record as received: the stored JSON with its policy document put back. Raises
    ValueError when either is not a JSON object (never so as written: edited in the database)."""
    record = json.loads(stored)
    if not isinstance(record, dict):
        raise ValueError(f"the stored record is a JSON {type(record).__name__}, not an object")
    if document is not None:
        record["policy_document"] = json.loads(document)
    return record
