"""The audit record's JSON without serialising the same parts twice per event (pure).

`AuditRecord.to_json()` writes the verdict again (the verdict record has just been written) and
the policy document, which is the same for every event of a policy and is most of the
record's bytes (the rendered prompt). `audit_json` gives the same bytes, byte for byte: it
takes the verdict's JSON as written for the verdict record, the policy document's JSON from a
small cache keyed by the policy hash (checked against the document itself), and serialises
only the rest of the record.
"""

from __future__ import annotations

import threading
from typing import Any

import pydantic_core

from moderator.events.verdict import AuditRecord

MAX_DOCUMENTS = 64
"""Policy documents whose JSON is kept (one per policy version in use); the cache is emptied
when it would hold more."""

_FIELDS = list(AuditRecord.model_fields)
_PREFIX = b'{"schema":"moderator.audit/v1"'
# The record is written as: schema, verdict, the fields up to the policy document, the policy
# document, the fields after it. The layout is checked once here; any other layout (a field
# moved) falls back to AuditRecord.to_json().
_SPLICEABLE = _FIELDS[:2] == ["schema_", "verdict"] and "policy_document" in _FIELDS
_TAIL = _FIELDS[_FIELDS.index("policy_document") + 1 :] if _SPLICEABLE else []
_TAIL_KEYS = [f',"{name}":'.encode() for name in _TAIL]
_LEFT_OUT: set[str] = {"verdict", "policy_document", *_TAIL}

_documents: dict[str, tuple[dict[str, Any], bytes]] = {}
_lock = threading.Lock()


def audit_json(audit: AuditRecord, verdict_json: bytes) -> bytes:
    """`audit.to_json()`, reusing `verdict_json` (`audit.verdict.to_json()`)."""
    if not _SPLICEABLE:
        return audit.to_json()
    head = audit.model_dump_json(by_alias=True, exclude=_LEFT_OUT).encode()
    if not head.startswith(_PREFIX):
        return audit.to_json()
    parts = [_PREFIX, b',"verdict":', verdict_json, head[len(_PREFIX) : -1]]
    parts += (b',"policy_document":', _document_json(audit.policy_hash, audit.policy_document))
    for key, name in zip(_TAIL_KEYS, _TAIL, strict=True):
        parts += (key, pydantic_core.to_json(getattr(audit, name)))
    parts.append(b"}")
    return b"".join(parts)


def _document_json(policy_hash: str, document: dict[str, Any] | None) -> bytes:
    if document is None:
        return b"null"
    found = _documents.get(policy_hash)  # one dict read: atomic
    if found is not None and (found[0] is document or found[0] == document):
        return found[1]
    text = pydantic_core.to_json(document)
    with _lock:
        if len(_documents) >= MAX_DOCUMENTS:
            _documents.clear()
        _documents[policy_hash] = (document, text)
    return text
