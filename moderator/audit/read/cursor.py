"""Opaque keyset cursors of audit queries: what one names and how a forged one is refused. Pure."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from moderator.audit.errors import InvalidQuery
from moderator.audit.fields import MalformedRecord, parse_time
from moderator.audit.models import EARLIEST, AuditRow, text_problem

MAX_CURSOR = 8192
"""Characters of a cursor: about 100 plus the JSON of one event id."""


class InvalidCursor(InvalidQuery):
    """A cursor `encode_cursor` did not make. The message speaks to an HTTP API caller
    (`next_cursor`); the CLI, which prints `next: --cursor C`, words its own."""


def encode_cursor(row: AuditRow, sort: str) -> str:
    """Opaque: base64url of the last row's (decided_at, event_id) and the sort it belongs to."""
    doc = {"s": sort, "t": row.decided_at.isoformat(), "e": row.event_id}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str, sort: str) -> tuple[datetime, str]:
    """The position a cursor names; InvalidQuery for anything `encode_cursor` did not make (a
    forged cursor may hold any JSON: numbers too large for the database, deep nesting, times
    that overflow in UTC, text the database cannot compare)."""
    invalid = InvalidCursor("invalid cursor (pass next_cursor from the previous page)")
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR:
        raise invalid
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, RecursionError, binascii.Error):
        raise invalid from None
    if not isinstance(doc, dict) or set(doc) != {"s", "t", "e"}:
        raise invalid
    cursor_sort, last = doc["s"], doc["e"]
    if not isinstance(cursor_sort, str) or not isinstance(last, str):
        raise invalid
    if text_problem(last, max_chars=MAX_CURSOR):
        raise invalid
    try:
        at = parse_time(doc["t"])
    except MalformedRecord:
        raise invalid from None
    if at < EARLIEST:
        raise invalid
    if cursor_sort != sort:
        raise InvalidQuery("the cursor belongs to the other sort order")
    return at, last
