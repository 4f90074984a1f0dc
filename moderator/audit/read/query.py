"""Audit queries: filters, keyset pagination with opaque cursors, and row mapping."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, and_, or_, select

from moderator.audit.db.tables import audit_records
from moderator.audit.errors import InvalidQuery
from moderator.audit.fields import MalformedRecord, RecordFields, parse_time
from moderator.audit.models import EARLIEST, AuditQuery, AuditRow, text_problem

T = audit_records.c
ROW_COLUMNS = tuple(audit_records.columns)
_NOT_IN_ROW = ("record", "policy_elided", "category_code")
MAX_CURSOR = 8192
"""Characters of a cursor: about 100 plus the JSON of one event id."""


def build_select(q: AuditQuery) -> Select[Any]:
    """The SELECT for one page (limit + 1 rows, to know whether another page follows), ordered
    by (decided_at, event_id): event ids are unique, and a cursor holding the last row's own
    event id says nothing about other rows (a row id would count every tenant's rows)."""
    conditions = _filters(q)
    descending = q.sort == "-decided_at"
    if q.cursor is not None:
        at, last = decode_cursor(q.cursor, q.sort)
        if descending:
            conditions.append(or_(T.decided_at < at, and_(T.decided_at == at, T.event_id < last)))
        else:
            conditions.append(or_(T.decided_at > at, and_(T.decided_at == at, T.event_id > last)))
    order = (
        (T.decided_at.desc(), T.event_id.desc())
        if descending
        else (T.decided_at.asc(), T.event_id.asc())
    )
    return select(*ROW_COLUMNS).where(*conditions).order_by(*order).limit(q.limit + 1)


def _filters(q: AuditQuery) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    equal = {
        T.tenant_id: q.tenant_id,
        T.event_id: q.event_id,
        T.object_bucket: q.object_bucket,
        T.object_key: q.object_key,
        T.sha256: q.sha256,
        T.decision: q.decision,
    }
    out += [column == value for column, value in equal.items() if value is not None]
    if q.tenant_ids is not None:  # access scope: an empty tuple must match nothing
        out.append(T.tenant_id.in_(list(q.tenant_ids)))
    if q.category is not None:
        if ":" in q.category:
            code = q.category.split(":", 1)[0]
            out += [T.category_code == code, T.category == q.category]
        else:
            out.append(T.category_code == q.category)
    if q.policy_version is not None:
        full = len(q.policy_version) == 64
        out.append((T.policy_hash if full else T.policy_version) == q.policy_version)
    if q.model is not None:
        engine, _, name = q.model.partition(":")
        out.append(T.model_engine == engine)
        if name:
            out.append(T.model_name == name)
    if q.since is not None:
        out.append(T.decided_at >= q.since)
    if q.until is not None:
        out.append(T.decided_at < q.until)
    return out


def encode_cursor(row: AuditRow, sort: str) -> str:
    """Opaque: base64url of the last row's (decided_at, event_id) and the sort it belongs to."""
    doc = {"s": sort, "t": row.decided_at.isoformat(), "e": row.event_id}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str, sort: str) -> tuple[datetime, str]:
    """The position a cursor names; InvalidQuery for anything `encode_cursor` did not make (a
    forged cursor may hold any JSON: numbers too large for the database, deep nesting, times
    that overflow in UTC, text the database cannot compare)."""
    invalid = InvalidQuery("invalid cursor (pass next_cursor from the previous page)")
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


def to_row(row: RowMapping, record: dict[str, Any] | None) -> AuditRow:
    """An AuditRow from a result mapping of ROW_COLUMNS (`record` already restored)."""
    values = {c.name: row[c.name] for c in ROW_COLUMNS if c.name not in _NOT_IN_ROW}
    return AuditRow(**values, record=record)


def row_fields(row: RowMapping) -> RecordFields:
    """The stored indexed columns of a result row, for comparison with the record's."""
    return RecordFields(**{name: row[name] for name in RecordFields.__dataclass_fields__})
