"""The audit query filters: one table of fields, and their values as typed by people → `AuditQuery`.

`FILTERS` is the only list of them. Each field's name is its HTTP query parameter, its CLI flag
(`event_id` → `--event-id`) and its `AuditQuery` attribute; the table also holds its help text,
how a value is checked and normalised, and the audit_records column it compares. `audit query`,
`audit export-dsa` and the HTTP API build their flags and parameters from it, and the store
query its conditions, so all of them accept the same values and reject bad ones with the same
one-line reason. Times are ISO 8601; a date alone is midnight UTC of that day and a time without
an offset is UTC. Every value that passes can be bound to a query on either database: times
within years 1000..9999 in UTC, text without NUL or lone surrogates. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from difflib import get_close_matches
from typing import get_args

from moderator.audit.errors import InvalidQuery
from moderator.audit.models import EARLIEST, MAX_LIMIT, AuditQuery, Sort, text_problem
from moderator.audit.read.cursor import decode_cursor
from moderator.errors import DEAD_LETTER_ONLY, ErrorCode
from moderator.events.upload import TENANT_ID_RULE
from moderator.events.verdict import CATEGORIES, Source, category_code, code_of

DECISIONS = ("allow", "review", "block")
ERROR_CODES = tuple(sorted(c.value for c in ErrorCode if c not in DEAD_LETTER_ONLY))
"""The error codes a verdict (and so an audit row) can carry."""
SOURCES: tuple[str, ...] = get_args(Source)
ENGINES = ("nudenet", "transformers", "lmdeploy", "openai", "fake")
"""The engines a verdict names (engine.kind; a test holds the two lists together)."""
SORTS: tuple[Sort, ...] = ("decided_at", "-decided_at")
CATEGORY_CODES = tuple(category_code(c) for c in CATEGORIES)
_FULL = {category_code(c): c for c in CATEGORIES}
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
VERSION_RE = re.compile(r"[0-9a-f]{16}|[0-9a-f]{64}")
TIME_EXAMPLES = (
    "e.g. 2026-11-29T02:00:00Z; a date alone (2026-11-29) is midnight UTC, "
    "a time without an offset is UTC"
)
TIME_HELP = f"ISO 8601 time, {TIME_EXAMPLES}"
TIME_RANGE = "1000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z"

Parser = Callable[[str, str], "str | datetime"]
"""(field name, value as typed) → the normalised value; raises BadFilter."""


class BadFilter(InvalidQuery):
    """One filter value is wrong; `field` is its name (`since`, `event_id`, ...). `other` is a
    second field the reason ends with (`until: must be later than since`), so that a caller can
    name both its own way (`reason_naming`: `--until: must be later than --since`)."""

    def __init__(self, field: str, reason: str, *, other: str | None = None) -> None:
        self._stem = reason
        self.field = field
        self.other = other
        self.reason = reason if other is None else f"{reason} {other}"
        super().__init__(f"{field}: {self.reason}")

    def reason_naming(self, name: Callable[[str], str]) -> str:
        """The reason with the other field named by `name` (the CLI's flag_name)."""
        return self.reason if self.other is None else f"{self._stem} {name(self.other)}"


@dataclass(frozen=True)
class FilterField:
    """One filter: `name` is the query parameter, the CLI flag and the AuditQuery attribute;
    `column` the audit_records column it must equal (None: `query.py` has a rule of its own for
    it); `choices` a closed set of values, which the API's schema lists."""

    name: str
    help: str
    metavar: str
    parse: Parser
    column: str | None
    choices: tuple[str, ...] = ()


def build_query(
    raw: Mapping[str, str | None],
    *,
    sort: str = "-decided_at",
    limit: int = 100,
    cursor: str | None = None,
    tenant_ids: tuple[str, ...] | None = None,
) -> AuditQuery:
    """Validate and normalise every value of `raw` (keyed by field name; None or absent: not
    given), in the table's order; raise `BadFilter` naming the first bad one."""
    unknown = set(raw) - {f.name for f in FILTERS}
    if unknown:  # a caller's mistake, not a user's: every name comes from FILTERS
        raise ValueError(f"not audit filters: {', '.join(sorted(unknown))}")
    values: dict[str, str | datetime | None] = {}
    for field in FILTERS:
        value = raw.get(field.name)
        values[field.name] = None if value is None else field.parse(field.name, value)
    since, until = values["since"], values["until"]
    if isinstance(since, datetime) and isinstance(until, datetime) and until <= since:
        raise BadFilter("until", "must be later than", other="since")
    if sort not in SORTS:
        raise BadFilter("sort", f"must be decided_at or -decided_at, got {shown(sort)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    query = AuditQuery(
        **values,  # type: ignore[arg-type]  # each parser returns its attribute's type
        sort="decided_at" if sort == "decided_at" else "-decided_at",
        limit=limit,
        cursor=cursor,
        tenant_ids=tenant_ids,
    )
    if cursor is not None:
        try:
            decode_cursor(query)
        except InvalidQuery as exc:
            raise BadFilter("cursor", str(exc)) from exc
    return query


def parse_limit(value: str) -> int:
    """A page size as typed (`--limit 50`) → int; BadFilter unless 1..MAX_LIMIT."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BadFilter("limit", f"must be a whole number 1..{MAX_LIMIT}, got {shown(value)}")
    limit = int(text)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def parse_time_arg(field: str, value: str) -> datetime:
    """ISO 8601 → aware UTC datetime; date-only and offset-less values are taken as UTC."""
    text = value.strip()
    if text[-2:-1].isdigit() and text.endswith("z"):  # RFC 3339 allows `z`; Python reads `Z` only
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(field, f"not an ISO 8601 time: {shown(value)} ({TIME_EXAMPLES})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-01:00 is in the year 10000 in UTC
        utc = None
    if utc is None or utc < EARLIEST:
        raise BadFilter(field, f"out of range: {shown(value)} (use {TIME_RANGE})")
    return utc


def parse_category(field: str, value: str) -> str:
    """A code or a name in any case (`O4`, `o4`, `nudity content`, `NA`) → the upper-case code;
    a full `code: name` string → the taxonomy's spelling of it, or the string with its code in
    upper case when the name is not the taxonomy's."""
    text = value.strip()
    code = code_of(text)
    if code is not None:
        return _FULL[code] if ":" in text else code
    code = category_code(text).strip().upper()
    if ":" not in text or code not in CATEGORY_CODES:
        known = ", ".join(CATEGORY_CODES)
        raise BadFilter(
            field, f"unknown category {shown(value)} (use a code, {known}, or a category name)"
        )
    return _text(field, f"{code}:{text.split(':', 1)[1]}")


def _one_of(choices: tuple[str, ...]) -> Parser:
    """A parser for a value of a closed set, matched exactly."""

    def parse(field: str, value: str) -> str:
        if value not in choices:
            raise BadFilter(field, f"must be one of {', '.join(choices)}, got {shown(value)}")
        return value

    return parse


def _model(field: str, value: str) -> str:
    """ENGINE or ENGINE:NAME; the engine one of ENGINES, in any case (stored in lower case),
    the name as the row holds it (names are case-sensitive: `AIML-TUDA/QwenGuard-v1.2-3B`)."""
    engine, colon, name = value.partition(":")
    if not engine.strip() or (colon and not name.strip()):
        raise BadFilter(field, f"must be ENGINE or ENGINE:NAME, got {shown(value)}")
    if engine.lower() not in ENGINES:
        close = get_close_matches(engine.lower(), ENGINES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadFilter(
            field, f"unknown engine {shown(engine)} (engines: {', '.join(ENGINES)}){hint}"
        )
    return _text(field, engine.lower() + colon + name)


def _matching(pattern: re.Pattern[str], what: str, *, lower: bool = False) -> Parser:
    """A parser for values that must match `pattern` (stripped and lower-cased first: hex)."""

    def parse(field: str, value: str) -> str:
        text = value.strip().lower() if lower else value
        if not pattern.fullmatch(text):
            raise BadFilter(field, f"expected {what}, got {shown(text)}")
        return text

    return parse


def _tenant(field: str, value: str) -> str:
    """A tenant id; one that only its case keeps from being one is named in lowercase."""
    if TENANT_RE.fullmatch(value):
        return value
    hint = f"; did you mean {value.lower()!r}?" if TENANT_RE.fullmatch(value.lower()) else ""
    raise BadFilter(
        field,
        f"expected a tenant id ({TENANT_ID_RULE}), got {shown(value)}{hint}",
    )


def _text(field: str, value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise BadFilter(field, problem)
    return value


def shown(value: str, width: int = 40) -> str:
    """A value as an error message repeats it: quoted, escaped, at most about `width` chars."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


FILTERS: tuple[FilterField, ...] = (
    FilterField(
        "tenant",
        help="tenant id",
        metavar="T",
        parse=_tenant,
        column="tenant_id",
    ),
    FilterField(
        "event_id",
        help="upload event id",
        metavar="ID",
        parse=_matching(EVENT_ID_RE, "1-128 of [A-Za-z0-9._:-]"),
        column="event_id",
    ),
    FilterField("bucket", help="object bucket", metavar="B", parse=_text, column="object_bucket"),
    FilterField(
        "object_key", help="exact object key", metavar="KEY", parse=_text, column="object_key"
    ),
    FilterField(
        "sha256",
        help="image content SHA-256 (64 hex)",
        metavar="HEX",
        parse=_matching(HEX64_RE, "64 hex digits", lower=True),
        column="sha256",
    ),
    FilterField(
        "decision",
        help="the decision: allow, review or block",
        metavar="|".join(DECISIONS),
        parse=_one_of(DECISIONS),
        column="decision",
        choices=DECISIONS,
    ),
    FilterField(
        "category",
        help="category: a code (O1..O9, NA) or name in any case, or the full category string",
        metavar="C",
        parse=parse_category,
        column=None,  # the code column, and the full string when one is given
    ),
    FilterField(
        "policy_version",
        help="policy version (16 hex) or full policy hash (64 hex)",
        metavar="V",
        parse=_matching(VERSION_RE, "16 hex digits (version) or 64 (full policy hash)", lower=True),
        column=None,  # policy_version or policy_hash, by length
    ),
    FilterField(
        "model",
        help="engine (any case), or engine and the model's exact name (ENGINE or ENGINE:NAME)",
        metavar="ENGINE[:NAME]",
        parse=_model,
        column=None,  # model_engine, and model_name when one is given
    ),
    FilterField(
        "error",
        help="the error code of an error verdict (corrupt_image, engine_timeout, ...)",
        metavar="CODE",
        parse=_one_of(ERROR_CODES),
        column="error_code",
        choices=ERROR_CODES,
    ),
    FilterField(
        "source",
        help="what decided: model (the engine), cache (a cached judgement) or error (on_error)",
        metavar="|".join(SOURCES),
        parse=_one_of(SOURCES),
        column="source",
        choices=SOURCES,
    ),
    FilterField(
        "surface",
        help="the upload surface (context.surface), exact",
        metavar="S",
        parse=_text,
        column="surface",
    ),
    FilterField(
        "since",
        help=f"decided at or after; {TIME_HELP}",
        metavar="TIME",
        parse=parse_time_arg,
        column=None,  # decided_at, inclusive
    ),
    FilterField(
        "until",
        help=f"decided before; {TIME_HELP}",
        metavar="TIME",
        parse=parse_time_arg,
        column=None,  # decided_at, exclusive
    ),
)
