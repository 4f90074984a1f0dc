"""Opaque keyset cursors of audit queries: what one names and how a forged one is refused. Pure."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import fields
from datetime import datetime

from moderator.audit.errors import InvalidQuery
from moderator.audit.fields import MalformedRecord, parse_time
from moderator.audit.models import EARLIEST, AuditQuery, AuditRow, text_problem

MAX_CURSOR = 8192
"""Characters of a cursor: about 100 plus the JSON of one event id."""


class InvalidCursor(InvalidQuery):
    """A cursor `encode_cursor` did not make. The message speaks to an HTTP API caller
    (`next_cursor`); the CLI, which prints `next: --cursor C`, words its own."""


_NOT_FILTERS = frozenset({"sort", "limit", "cursor", "tenant_ids"})


def filters_digest(q: AuditQuery) -> str:
    """16 hex characters naming the filters of `q` (not its sort, page size, cursor or access
    scope): a cursor holds them, so that it continues only the query that made it."""
    values = {
        f.name: str(getattr(q, f.name))
        for f in fields(q)
        if f.name not in _NOT_FILTERS and getattr(q, f.name) is not None
    }
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(row: AuditRow, q: AuditQuery) -> str:
    """Opaque: base64url of the last row's (decided_at, event_id), the sort it belongs to and
    the digest of the filters that found it."""
    doc = {"s": q.sort, "t": row.decided_at.isoformat(), "e": row.event_id, "f": filters_digest(q)}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_cursor(q: AuditQuery) -> tuple[datetime, str]:
    """The position `q.cursor` names; InvalidQuery for anything `encode_cursor` did not make (a
    forged cursor may hold any JSON: numbers too large for the database, deep nesting, times
    that overflow in UTC, text the database cannot compare) and for a cursor of another sort
    order or other filters (it would skip or repeat rows of this query)."""
    invalid = InvalidCursor("invalid cursor (pass next_cursor from the previous page)")
    cursor = q.cursor
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR:
        raise invalid
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, RecursionError, binascii.Error):
        raise invalid from None
    if not isinstance(doc, dict) or set(doc) != {"s", "t", "e", "f"}:
        raise invalid
    cursor_sort, last, made_by = doc["s"], doc["e"], doc["f"]
    if not all(isinstance(v, str) for v in (cursor_sort, last, made_by)):
        raise invalid
    if text_problem(last, max_chars=MAX_CURSOR):
        raise invalid
    try:
        at = parse_time(doc["t"])
    except MalformedRecord:
        raise invalid from None
    if at < EARLIEST:
        raise invalid
    if cursor_sort != q.sort:
        raise InvalidQuery("the cursor belongs to the other sort order")
    if made_by != filters_digest(q):
        raise InvalidQuery("the cursor belongs to a query with other filters (repeat them)")
    return at, last
