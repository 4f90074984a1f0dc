"""Canonical JSON and the audit hash chain's hash definitions. Pure.

Every hash here is the lowercase hex SHA-256 of RFC 8785 (JSON Canonicalization Scheme) bytes,
so SQLite and PostgreSQL, and any other verifier, hash exactly the same bytes:

- ``record_hash = sha256(JCS(record))``, where `record` is the AuditRecord JSON object as the
  sink received it (including `policy_document`).
- ``columns_hash = sha256(JCS({"columns": "moderator.audit-columns/v1", <kept column>: value,
  ...}))`` over `KEPT_COLUMNS`: every indexed column that redaction keeps (all of
  `fields.RecordFields` but `fields.PERSONAL_COLUMNS`) and the row's audit-topic `offset`;
  `decided_at` as fixed-width UTC text (`2026-11-29T02:00:01.234000Z`), absent values as null.
  A redacted row has no record left to hash, so this is what binds its kept columns.
- ``row_hash = link_hash(prev_hash, record_hash, seq, topic, partition, columns_hash)`` =
  ``sha256(JCS({"chain": "moderator.audit-chain/v2", "columns_hash": columns_hash,
  "partition": partition, "prev_hash": prev_hash, "record_hash": record_hash, "seq": seq,
  "topic": topic}))``. Rows written before schema version 3 have no columns hash and use
  format v1: the same object with `"chain": "moderator.audit-chain/v1"` and no `columns_hash`.
  `seq` is the row's 1-based position in its (topic, partition) chain and `prev_hash` is the
  previous row's `row_hash`, or `GENESIS_HASH` (64 zeros) for seq 1. Covering seq, topic and
  partition means a row cannot be moved within or between chains without breaking its own hash;
  covering the format tag and columns_hash means a row cannot be turned into a v1 row either.

Policy documents are hashed the way `moderator.policy.compiled.TenantPolicy.full_hash` does
(`json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`), which differs from
RFC 8785 only in number formatting (`1.0` vs `1`, `1e-05` vs `0.00001`) and, in theory, in the
order of keys outside the Basic Multilingual Plane: `policy_document_hashes` accepts either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from moderator.audit.chain import jcs
from moderator.audit.fields import PERSONAL_COLUMNS, RecordFields

GENESIS_HASH = "0" * 64
CHAIN_SCHEMA = "moderator.audit-chain/v1"
CHAIN_SCHEMA_V2 = "moderator.audit-chain/v2"
COLUMNS_SCHEMA = "moderator.audit-columns/v1"
KEPT_COLUMNS: tuple[str, ...] = (
    *(f.name for f in fields(RecordFields) if f.name not in PERSONAL_COLUMNS),
    "offset",
)
"""What `columns_hash` covers: the columns a redacted row still shows."""
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
CanonicalizationError = jcs.CanonicalizationError


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON of `obj` (dicts, lists, str, int, float, bool, None).

    Raises `CanonicalizationError` (a ValueError) for NaN/infinity, integers beyond +-(2**53-1)
    and non-string keys.
    """
    return jcs.dumps(obj)


def canonical_members(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """Each member's canonical value, for `canonical_object`."""
    return {key: canonical_json(value) for key, value in obj.items()}


def canonical_object(members: Mapping[str, bytes]) -> bytes:
    """RFC 8785 bytes of an object given its members' canonical values: what `canonical_json`
    would produce, without serialising again a member already serialised (e.g. the large
    policy document that most records share)."""
    for key in members:
        if not isinstance(key, str):
            raise CanonicalizationError("object keys must be strings")
    ordered = sorted(members, key=lambda k: k.encode("utf-16be"))  # RFC 8785 3.2.3
    body = b",".join(canonical_json(key) + b":" + members[key] for key in ordered)
    return b"{" + body + b"}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the record's canonical JSON."""
    return sha256_hex(canonical_json(dict(record)))


def columns_hash(columns: Mapping[str, Any]) -> str:
    """The hash of a row's `KEPT_COLUMNS` (a mapping holding at least those names). Raises
    `CanonicalizationError` for a value JSON cannot hold (an offset beyond 2**53, NaN)."""
    doc: dict[str, Any] = {"columns": COLUMNS_SCHEMA}
    for name in KEPT_COLUMNS:
        value = columns[name]
        doc[name] = _time_text(value) if isinstance(value, datetime) else value
    return sha256_hex(canonical_json(doc))


def _time_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise CanonicalizationError("timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def link_hash(
    prev_hash: str,
    record_hash: str,
    seq: int,
    topic: str,
    partition: int,
    columns_hash: str | None = None,
) -> str:
    """The row hash chaining one record to its predecessor (see the module docstring): format
    v2 with a columns hash, v1 (rows written before schema version 3) without."""
    doc: dict[str, Any] = {
        "chain": CHAIN_SCHEMA,
        "partition": partition,
        "prev_hash": prev_hash,
        "record_hash": record_hash,
        "seq": seq,
        "topic": topic,
    }
    if columns_hash is not None:
        doc |= {"chain": CHAIN_SCHEMA_V2, "columns_hash": columns_hash}
    return sha256_hex(canonical_json(doc))


def policy_json(document: Mapping[str, Any]) -> bytes:
    """The bytes `TenantPolicy.full_hash` hashes (kept in step with moderator.policy.compiled)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def policy_document_bytes(document: Mapping[str, Any], policy_hash: str) -> bytes | None:
    """The serialization of `document` whose SHA-256 is `policy_hash`, or None if neither the
    compiled-policy JSON nor RFC 8785 matches (a document that does not belong to the hash)."""
    candidates = (policy_json, lambda d: canonical_json(dict(d)))
    for serialize in candidates:
        try:
            data = serialize(document)
        except (TypeError, ValueError):
            continue
        if sha256_hex(data) == policy_hash:
            return data
    return None
