"""Canonical JSON and the audit hash chain's hash definitions. Pure.

Every hash here is the lowercase hex SHA-256 of RFC 8785 (JSON Canonicalization Scheme) bytes,
so SQLite and PostgreSQL, and any other verifier, hash exactly the same bytes:

- ``record_hash = sha256(JCS(record))``, where `record` is the AuditRecord JSON object as the
  sink received it (including `policy_document`).
- ``row_hash = link_hash(prev_hash, record_hash, seq, topic, partition)`` =
  ``sha256(JCS({"chain": "moderator.audit-chain/v1", "partition": partition,
  "prev_hash": prev_hash, "record_hash": record_hash, "seq": seq, "topic": topic}))``.
  `seq` is the row's 1-based position in its (topic, partition) chain and `prev_hash` is the
  previous row's `row_hash`, or `GENESIS_HASH` (64 zeros) for seq 1. Covering seq, topic and
  partition means a row cannot be moved within or between chains without breaking its own hash.

Policy documents are hashed the way `moderator.policy.compiled.TenantPolicy.full_hash` does
(`json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`), which differs from
RFC 8785 only in number formatting (`1.0` vs `1`, `1e-05` vs `0.00001`) and, in theory, in the
order of keys outside the Basic Multilingual Plane: `policy_document_hashes` accepts either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from moderator.audit import jcs

GENESIS_HASH = "0" * 64
CHAIN_SCHEMA = "moderator.audit-chain/v1"
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


def link_hash(prev_hash: str, record_hash: str, seq: int, topic: str, partition: int) -> str:
    """The row hash chaining one record to its predecessor (see the module docstring)."""
    return sha256_hex(
        canonical_json(
            {
                "chain": CHAIN_SCHEMA,
                "partition": partition,
                "prev_hash": prev_hash,
                "record_hash": record_hash,
                "seq": seq,
                "topic": topic,
            }
        )
    )


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
