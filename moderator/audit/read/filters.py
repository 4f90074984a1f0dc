"""Audit query filters as typed by people (CLI flags, HTTP query parameters) → `AuditQuery`.

One parser for `moderator audit query` and the HTTP API, so both accept the same values and
reject bad ones with the same one-line reason. Times are ISO 8601; a date alone is midnight UTC
of that day and a time without an offset is UTC. Every value that passes can be bound to a query
on either database: times within years 1000..9999 in UTC, text without NUL or lone surrogates.
Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from moderator.audit.errors import InvalidQuery
from moderator.audit.models import EARLIEST, MAX_LIMIT, AuditQuery, Sort, text_problem
from moderator.audit.read.query import decode_cursor
from moderator.events.verdict import CATEGORIES, category_code

DECISIONS = ("allow", "review", "block")
SORTS: tuple[Sort, ...] = ("decided_at", "-decided_at")
CATEGORY_CODES = tuple(category_code(c) for c in CATEGORIES)
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
VERSION_RE = re.compile(r"[0-9a-f]{16}|[0-9a-f]{64}")
TIME_HELP = (
    "ISO 8601 time, e.g. 2026-11-29T02:00:00Z; a date alone (2026-11-29) is midnight UTC, "
    "a time without an offset is UTC"
)
TIME_RANGE = "1000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z"


class BadFilter(InvalidQuery):
    """One filter value is wrong; `field` is its name (`since`, `event_id`, ...)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Filters:
    """Raw filter values; None = not given."""

    tenant: str | None = None
    event_id: str | None = None
    bucket: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    decision: str | None = None
    category: str | None = None
    policy_version: str | None = None
    model: str | None = None
    since: str | None = None
    until: str | None = None


def build_query(
    filters: Filters,
    *,
    sort: str = "-decided_at",
    limit: int = 100,
    cursor: str | None = None,
    tenant_ids: tuple[str, ...] | None = None,
) -> AuditQuery:
    """Validate and normalise every value; raise `BadFilter` naming the first bad one."""
    since = parse_time_arg("since", filters.since)
    until = parse_time_arg("until", filters.until)
    if since is not None and until is not None and until <= since:
        raise BadFilter("until", "must be later than since")
    if sort not in SORTS:
        raise BadFilter("sort", f"must be decided_at or -decided_at, got {shown(sort)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    if cursor is not None:
        try:
            decode_cursor(cursor, sort)
        except InvalidQuery as exc:
            raise BadFilter("cursor", str(exc)) from exc
    return AuditQuery(
        tenant_id=_match("tenant", filters.tenant, TENANT_RE, "a tenant id like acme"),
        event_id=_match("event_id", filters.event_id, EVENT_ID_RE, "1-128 of [A-Za-z0-9._:-]"),
        object_bucket=_text("bucket", filters.bucket),
        object_key=_text("object_key", filters.object_key),
        sha256=_match("sha256", _lower(filters.sha256), HEX64_RE, "64 hex digits"),
        decision=_decision(filters.decision),
        category=parse_category(filters.category),
        policy_version=_match(
            "policy_version",
            _lower(filters.policy_version),
            VERSION_RE,
            "16 hex digits (version) or 64 (full policy hash)",
        ),
        model=_model(filters.model),
        since=since,
        until=until,
        sort="decided_at" if sort == "decided_at" else "-decided_at",
        limit=limit,
        cursor=cursor,
        tenant_ids=tenant_ids,
    )


def parse_limit(value: str) -> int:
    """A page size as typed (`--limit 50`) → int; BadFilter unless 1..MAX_LIMIT."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BadFilter("limit", f"must be a whole number 1..{MAX_LIMIT}, got {shown(value)}")
    limit = int(text)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def parse_time_arg(field: str, value: str | None) -> datetime | None:
    """ISO 8601 → aware UTC datetime; date-only and offset-less values are taken as UTC."""
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(field, f"not an ISO 8601 time: {shown(value)} ({TIME_HELP})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-01:00 is in the year 10000 in UTC
        utc = None
    if utc is None or utc < EARLIEST:
        raise BadFilter(field, f"out of range: {shown(value)} (use {TIME_RANGE})")
    return utc


def parse_category(value: str | None) -> str | None:
    """A code (`O4`, `o4`, `NA`) → upper-case code; a full `code: name` string stays as it is."""
    if value is None:
        return None
    text = value.strip()
    code = category_code(text).strip().upper()
    if code not in CATEGORY_CODES:
        known = ", ".join(CATEGORY_CODES)
        raise BadFilter("category", f"unknown category {shown(value)} (use a code: {known})")
    return _text("category", text) if ":" in text else code


def _decision(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in DECISIONS:
        raise BadFilter("decision", f"must be one of {', '.join(DECISIONS)}, got {shown(value)}")
    return value


def _model(value: str | None) -> str | None:
    if value is None:
        return None
    engine, colon, name = value.partition(":")
    if not engine.strip() or (colon and not name.strip()):
        raise BadFilter("model", f"must be ENGINE or ENGINE:NAME, got {shown(value)}")
    return _text("model", value)


def _match(field: str, value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is None:
        return None
    if not pattern.fullmatch(value):
        raise BadFilter(field, f"expected {what}, got {shown(value)}")
    return value


def _text(field: str, value: str | None) -> str | None:
    problem = text_problem(value) if value is not None else None
    if problem:
        raise BadFilter(field, problem)
    return value


def shown(value: str, width: int = 40) -> str:
    """A value as an error message repeats it: quoted, escaped, at most about `width` chars."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def _lower(value: str | None) -> str | None:
    return value.strip().lower() if value is not None else None
