"""Build an `Explanation` from an audit record (or a verdict) and its compiled policy document.

The decision path is traced with the same rules `moderator.policy.decide` applies, read from the
document's decision table (what the policy hash covers, so it is the table the verdict was
decided under):

1. the row is the category named by the assessment's code, `none_applying` (NA) for anything
   else;
2. with a score and a row that sets `block_at` or `review_at`: score >= block_at → block, else
   score >= review_at → review, else allow;
3. otherwise Unsafe → the row's action, Safe → allow;
4. an `allowed` category never blocks (block becomes review);
5. an error verdict: the table's `on_error` decision for its code.

The traced decision is compared with the recorded one (`Explanation.matches_policy`). A record
redacted by retention, or a policy document the store no longer holds, still gives what the
indexed columns carry, and `missing` says what is gone. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from moderator.audit.fields import MalformedRecord, RecordFields, parse_time, record_fields
from moderator.audit.models import AuditRow
from moderator.errors import SECURITY_ERRORS
from moderator.events.verdict import category_code
from moderator.explain.model import (
    AssessmentFacts,
    CacheFacts,
    ErrorFacts,
    Explanation,
    InputFacts,
    ModelFacts,
    PolicyFacts,
    RuleFacts,
    TableRow,
)

CODES = tuple(f"O{n}" for n in range(1, 10))
NONE_APPLYING = "NA"
DECISIONS = ("allow", "review", "block")
_SECURITY = frozenset(code.value for code in SECURITY_ERRORS)
REDACTED_GONE = "object key, rationale, error message, image format and size, upload time"


@dataclass(frozen=True)
class DecisionTable:
    """The parts of a compiled decision table the rules read."""

    categories: Mapping[str, TableRow]
    none_applying: TableRow
    on_error: Mapping[str, str]

    def row_for(self, category: str) -> TableRow:
        code = category_code(category).strip()
        found = self.categories.get(code) if code in CODES else None
        return found if found is not None else self.none_applying


@dataclass(frozen=True)
class CacheOrigin:
    """The earliest model judgement of a cached verdict's image, found in the audit store."""

    event_id: str
    decided_at: datetime


def explain_row(
    row: AuditRow,
    policy_document: Mapping[str, Any] | None,
    *,
    cache_origin: CacheOrigin | None = None,
    origin_looked_up: bool = False,
) -> Explanation:
    """Explain a stored audit row (its record may be None: redacted)."""
    values = {
        f.name: getattr(row, f.name) for f in fields(RecordFields) if f.name != "category_code"
    }
    columns = RecordFields(
        **values, category_code=category_code(row.category) if row.category else None
    )
    return explain_record(
        columns,
        row.record,
        policy_document,
        redacted_at=row.redacted_at,
        cache_origin=cache_origin,
        origin_looked_up=origin_looked_up,
    )


def explain_verdict(
    verdict: Mapping[str, Any], policy_document: Mapping[str, Any] | None
) -> Explanation:
    """Explain a Verdict v1 document (no audit record: nothing is missing but the table when
    `policy_document` is None). Raises ValueError for a document that is not a verdict."""
    record = {"verdict": verdict}
    try:
        columns = record_fields(record)
    except MalformedRecord as exc:
        raise ValueError(f"not a verdict: {exc}") from exc
    return explain_record(columns, record, policy_document)


def explain_record(
    columns: RecordFields,
    record: Mapping[str, Any] | None,
    policy_document: Mapping[str, Any] | None,
    *,
    redacted_at: datetime | None = None,
    cache_origin: CacheOrigin | None = None,
    origin_looked_up: bool = False,
) -> Explanation:
    """The explanation of one verdict from its indexed columns, its AuditRecord (None once
    redacted) and the compiled policy document it was decided under (None when not kept)."""
    verdict = _obj(record, "verdict")
    missing: list[str] = []
    if record is None:
        when = f" at {_time_text(redacted_at)}" if redacted_at is not None else ""
        what = "redacted by retention" + when if redacted_at is not None else "not stored"
        missing.append(f"audit record: {what}; gone with it: {REDACTED_GONE}")
    table = read_table(policy_document)
    version = columns.policy_version
    if policy_document is None:
        missing.append(
            f"policy document: version {version or '(none recorded)'} is not available (not in "
            "the record, not kept in the audit store), so its decision table cannot be shown"
        )
    elif table is None:
        missing.append("decision table: the policy document holds none this version can read")
    error = _error(columns, verdict)
    assessment = None if error is not None else _assessment(columns, verdict)
    row = table.row_for(assessment.category or "") if table and assessment else None
    on_error = table.on_error.get(error.code) if table and error else None
    if error is not None:
        rule = RuleFacts(kind="on_error", decision=on_error) if table else _unknown()
    elif assessment is not None and row is not None:
        rule = trace(row, assessment.rating, assessment.score)
    else:
        rule = _unknown()
    return Explanation(
        event_id=columns.event_id,
        tenant_id=columns.tenant_id,
        decided_at=columns.decided_at,
        decision=columns.decision,
        source=columns.source,
        input=_input(columns, record, verdict),
        policy=PolicyFacts(
            version=version,
            hash=columns.policy_hash,
            document_kept=policy_document is not None,
            row=row,
            on_error=on_error,
        ),
        model=_model(columns, verdict),
        assessment=assessment,
        error=error,
        cache=_cache(columns, cache_origin, origin_looked_up),
        rule=rule,
        redacted_at=redacted_at,
        missing=tuple(missing),
    )


def trace(row: TableRow, rating: str | None, score: float | None) -> RuleFacts:
    """Which rule of `row` decides an assessment, and what it gives (steps 2 to 4 above)."""
    if score is not None and (row.block_at is not None or row.review_at is not None):
        name: Literal["block_at", "review_at"]
        value: float | None
        if row.block_at is not None and score >= row.block_at:
            base, name, value, crossed = "block", "block_at", row.block_at, True
        elif row.review_at is not None and score >= row.review_at:
            base, name, value, crossed = "review", "review_at", row.review_at, True
        elif row.review_at is not None:
            base, name, value, crossed = "allow", "review_at", row.review_at, False
        else:
            base, name, value, crossed = "allow", "block_at", row.block_at, False
        capped = row.mode == "allowed" and base == "block"
        return RuleFacts(
            kind="threshold",
            decision="review" if capped else base,
            threshold=name,
            threshold_value=value,
            crossed=crossed,
            capped=capped,
        )
    base = row.action if rating == "Unsafe" else "allow"
    capped = row.mode == "allowed" and base == "block"
    return RuleFacts(kind="rating", decision="review" if capped else base, capped=capped)


def read_table(document: Mapping[str, Any] | None) -> DecisionTable | None:
    """The decision table of a compiled policy document, or None when it has none in the form
    `moderator.policy.decide.decision_table_json` writes."""
    table = _obj(document, "decision_table")
    categories = _obj(table, "categories")
    on_error = _obj(table, "on_error")
    none_applying = _row(NONE_APPLYING, _obj(table, "none_applying"), has_mode=False)
    if not categories or none_applying is None:
        return None
    rows: dict[str, TableRow] = {}
    for code, found in categories.items():
        row = _row(str(code), found if isinstance(found, Mapping) else {}, has_mode=True)
        if row is None:
            return None
        rows[str(code)] = row
    errors = {str(k): v for k, v in on_error.items() if v in DECISIONS}
    return DecisionTable(categories=rows, none_applying=none_applying, on_error=errors)


def _row(code: str, found: Mapping[str, Any], *, has_mode: bool) -> TableRow | None:
    action = found.get("action")
    mode = found.get("mode") if has_mode else None
    if action not in DECISIONS or (has_mode and not isinstance(mode, str)):
        return None
    block_at, review_at = _number(found.get("block_at")), _number(found.get("review_at"))
    return TableRow(category=code, mode=mode, action=action, block_at=block_at, review_at=review_at)


def _input(
    columns: RecordFields, record: Mapping[str, Any] | None, verdict: Mapping[str, Any]
) -> InputFacts:
    obj = _obj(verdict, "object")
    uploaded = record.get("uploaded_at") if record is not None else None
    try:
        uploaded_at = parse_time(uploaded) if uploaded is not None else None
    except MalformedRecord:
        uploaded_at = None
    return InputFacts(
        surface=columns.surface,
        bucket=columns.object_bucket,
        key=columns.object_key if columns.object_key is not None else _text(obj, "key"),
        version_id=_text(obj, "version_id"),
        sha256=columns.sha256,
        format=_text(obj, "format"),
        width=_int(obj.get("width")),
        height=_int(obj.get("height")),
        uploaded_at=uploaded_at,
    )


def _assessment(columns: RecordFields, verdict: Mapping[str, Any]) -> AssessmentFacts | None:
    if columns.rating is None and columns.category is None and columns.score is None:
        return None
    found = _obj(verdict, "assessment")
    return AssessmentFacts(
        rating=columns.rating,
        category=columns.category,
        score=columns.score,
        rationale=_text(found, "rationale") if found else None,
    )


def _error(columns: RecordFields, verdict: Mapping[str, Any]) -> ErrorFacts | None:
    if columns.error_code is None:
        return None
    found = _obj(verdict, "error")
    return ErrorFacts(
        code=columns.error_code,
        message=_text(found, "message") if found else None,
        security=columns.error_code in _SECURITY,
    )


def _model(columns: RecordFields, verdict: Mapping[str, Any] | None) -> ModelFacts | None:
    if columns.model_engine is None:
        return None
    return ModelFacts(
        engine=columns.model_engine,
        name=columns.model_name,
        smoke_test=bool(columns.model_smoke_test),
        revision=_text(_obj(verdict, "model"), "revision"),
    )


def _cache(columns: RecordFields, origin: CacheOrigin | None, looked_up: bool) -> CacheFacts | None:
    if columns.source != "cache":
        return None
    if origin is None:
        return CacheFacts(looked_up=looked_up)
    return CacheFacts(
        looked_up=True, original_event_id=origin.event_id, original_decided_at=origin.decided_at
    )


def _unknown() -> RuleFacts:
    return RuleFacts(kind="unknown", decision=None)


def _obj(parent: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    found = parent.get(name) if parent is not None else None
    return found if isinstance(found, Mapping) else {}


def _text(parent: Mapping[str, Any], name: str) -> str | None:
    found = parent.get(name)
    return found if isinstance(found, str) else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time_text(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
