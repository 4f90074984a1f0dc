"""The indexed columns of an audit row, derived from the AuditRecord JSON. Pure.

The store derives them once at insert time and `verify` derives them again from the stored
record, so an edited column (say `decision`) is caught even though only the record is hashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moderator.events.verdict import category_code


class MalformedRecord(ValueError):
    """The record lacks what the audit store needs to index it."""


@dataclass(frozen=True)
class RecordFields:
    """Everything the store indexes or filters on, as found in one AuditRecord."""

    event_id: str
    tenant_id: str
    decided_at: datetime  # UTC, timezone-aware
    decision: str
    object_bucket: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    rating: str | None = None
    category: str | None = None
    category_code: str | None = None
    score: float | None = None
    policy_version: str | None = None
    policy_hash: str | None = None
    model_engine: str | None = None
    model_name: str | None = None
    model_smoke_test: bool | None = None
    error_code: str | None = None
    source: str | None = None
    surface: str | None = None

    def columns(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


PERSONAL_COLUMNS: frozenset[str] = frozenset({"object_key"})
"""Indexed columns that may hold personal data: cleared with the record on redaction."""


def parse_time(value: object) -> datetime:
    """An ISO 8601 timestamp with an offset (or `Z`), as UTC."""
    if not isinstance(value, str):
        raise MalformedRecord(f"timestamp must be a string, got {type(value).__name__}")
    shown = value if len(value) <= 64 else value[:61] + "..."
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedRecord(f"invalid timestamp {shown!r}") from exc
    if parsed.tzinfo is None:
        raise MalformedRecord(f"timestamp {shown!r} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # year 1 east of UTC, year 9999 west of it
        raise MalformedRecord(f"timestamp {shown!r} is out of range in UTC") from exc


def record_fields(record: Mapping[str, Any]) -> RecordFields:
    """Derive the indexed columns; raise `MalformedRecord` naming the first missing field."""
    if not isinstance(record, Mapping):
        raise MalformedRecord(f"an audit record must be a JSON object, got {type(record).__name__}")
    verdict = _obj(record, "verdict", required=True)
    obj = _obj(verdict, "object")
    assessment = _obj(verdict, "assessment")
    policy = _obj(verdict, "policy")
    model = _obj(verdict, "model")
    error = _obj(verdict, "error")
    category = _str(assessment, "category")
    score = assessment.get("score")
    smoke = model.get("smoke_test")
    return RecordFields(
        event_id=_str(verdict, "event_id", required=True) or "",
        tenant_id=_str(verdict, "tenant_id", required=True) or "",
        decided_at=parse_time(verdict.get("decided_at")),
        decision=_str(verdict, "decision", required=True) or "",
        object_bucket=_str(obj, "bucket"),
        object_key=_str(obj, "key"),
        sha256=_str(obj, "sha256"),
        rating=_str(assessment, "rating"),
        category=category,
        category_code=category_code(category) if category is not None else None,
        score=float(score)
        if isinstance(score, int | float) and not isinstance(score, bool)
        else None,
        policy_version=_str(policy, "version"),
        policy_hash=_str(record, "policy_hash"),
        model_engine=_str(model, "engine"),
        model_name=_str(model, "name"),
        model_smoke_test=smoke if isinstance(smoke, bool) else None,
        error_code=_str(error, "code"),
        source=_str(verdict, "source"),
        surface=_str(policy, "surface"),
    )


def _obj(parent: Mapping[str, Any], name: str, *, required: bool = False) -> Mapping[str, Any]:
    value = parent.get(name)
    if isinstance(value, Mapping):
        return value
    if value is None and not required:
        return {}
    raise MalformedRecord(f"{name} must be an object")


def _str(parent: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = parent.get(name)
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return None
    raise MalformedRecord(
        f"{name} must be a non-empty string" if required else f"{name}: not a string"
    )
