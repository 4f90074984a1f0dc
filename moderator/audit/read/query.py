"""Audit queries as SQL: the filters' conditions, keyset pagination, and row mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, and_, or_, select

from moderator.audit.db.tables import audit_records
from moderator.audit.fields import RecordFields
from moderator.audit.models import AuditQuery, AuditRow
from moderator.audit.read.cursor import decode_cursor
from moderator.audit.read.filters import FILTERS

T = audit_records.c
ROW_COLUMNS = tuple(audit_records.columns)
# `record` is restored by the store; `policy_elided` only says how it keeps the record's policy
# document (once, in policy_versions), which the restored record holds again.
_NOT_IN_ROW = ("record", "policy_elided")


def build_select(q: AuditQuery) -> Select[Any]:
    """The SELECT for one page (limit + 1 rows, to know whether another page follows), ordered
    by (decided_at, event_id): event ids are unique, and a cursor holding the last row's own
    event id says nothing about other rows (a row id would count every tenant's rows)."""
    conditions = _filters(q)
    descending = q.sort == "-decided_at"
    if q.cursor is not None:
        at, last = decode_cursor(q)
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
    for field in FILTERS:
        value = getattr(q, field.name)
        if value is None:
            continue
        if field.column is not None:
            out.append(T[field.column] == value)
        else:
            out += RULES[field.name](value)
    if q.tenant_ids is not None:  # access scope: an empty tuple must match nothing
        out.append(T.tenant_id.in_(list(q.tenant_ids)))
    return out


def _category(value: str) -> list[ColumnElement[bool]]:
    if ":" in value:
        return [T.category_code == value.split(":", 1)[0], T.category == value]
    return [T.category_code == value]


def _policy_version(value: str) -> list[ColumnElement[bool]]:
    return [(T.policy_hash if len(value) == 64 else T.policy_version) == value]


def _model(value: str) -> list[ColumnElement[bool]]:
    engine, _, name = value.partition(":")
    return [T.model_engine == engine] + ([T.model_name == name] if name else [])


RULES: dict[str, Callable[[Any], list[ColumnElement[bool]]]] = {
    "category": _category,
    "policy_version": _policy_version,
    "model": _model,
    "since": lambda at: [T.decided_at >= at],  # inclusive
    "until": lambda at: [T.decided_at < at],  # exclusive
}
"""The conditions of the filters whose `column` is None (keyed by field name)."""


def to_row(row: RowMapping, record: dict[str, Any] | None) -> AuditRow:
    """An AuditRow from a result mapping of ROW_COLUMNS (`record` already restored)."""
    values = {c.name: row[c.name] for c in ROW_COLUMNS if c.name not in _NOT_IN_ROW}
    return AuditRow(**values, record=record)


def row_fields(row: RowMapping) -> RecordFields:
    """The stored indexed columns of a result row, for comparison with the record's."""
    return RecordFields(**{name: row[name] for name in RecordFields.__dataclass_fields__})
