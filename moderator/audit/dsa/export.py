"""Audit records → DSA statements of reasons (EU Transparency Database, schema of 1 July 2025).

Pure: no database, no network. What goes out is built only from closed sets, numbers and our
own templates: the decision, the mapped statement category, the taxonomy's category name, the
rating, the score and policy threshold that decided (when a score threshold did), the policy
version, a declared surface name, the detection path and a fixed phrase per error code. The
model's rationale and raw output, error messages, user ids, object keys and buckets never reach a
statement (any of them may hold personal data). docs/audit.md explains each choice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from moderator.audit.dsa.facts import Assessed, decision_facts, explanation
from moderator.audit.dsa.rule import assessed
from moderator.audit.dsa.spec import (
    AUTOMATED_DECISION,
    AUTOMATED_DETECTION,
    BATCH_MAX,
    CONTENT_DATES,
    CONTENT_TYPES,
    DECISION_GROUND_ILLEGAL,
    DECISION_GROUND_INCOMPATIBLE,
    DECISION_GROUNDS,
    DECISION_VISIBILITY,
    EEA_COUNTRIES,
    EU_COUNTRIES,
    KEYWORDS,
    SCHEMA_VERSION,
    SOURCE_TYPES,
    SOURCE_VOLUNTARY,
    STATEMENT_CATEGORIES,
    trim,
    validate_statement,
)
from moderator.errors import ConfigError, ModeratorError
from moderator.policy.model import ResolvedPolicy

if TYPE_CHECKING:
    from moderator.audit.models import AuditRow

__all__ = [
    "AUTOMATED_DECISION",
    "AUTOMATED_DETECTION",
    "CONTENT_TYPES",
    "DECISION_GROUNDS",
    "DECISION_VISIBILITY",
    "EEA_COUNTRIES",
    "EU_COUNTRIES",
    "KEYWORDS",
    "SCHEMA_VERSION",
    "SOURCE_TYPES",
    "STATEMENT_CATEGORIES",
    "DsaExportError",
    "DsaOptionError",
    "DsaOptions",
    "TenantDsa",
    "batches",
    "content_date_for",
    "from_smoke_test_model",
    "puid_for",
    "skip_reason",
    "statement_for",
    "validate_statement",
]

PUID_PREFIX = "sor1-"  # bump the digit if the PUID derivation ever changes
MIN_SALT_CHARS = 16
# Error verdicts whose event pointed at no content of the tenant's users: nothing to report.
NO_CONTENT_ERRORS = frozenset({"object_not_found", "tenant_mismatch", "unknown_tenant"})


class DsaExportError(ModeratorError):
    """An audit record that cannot become a statement (malformed, or its category is unmapped)."""


class DsaOptionError(ConfigError):
    """A `DsaOptions` value the database would refuse; `option` names the field."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"DSA option {option}: {problem}")
        self.option = option
        self.problem = problem


# Free-text options: trimmed, and a blank one is missing (as the API treats it).
_TEXT_OPTIONS = (
    *("incompatible_content_ground", "illegal_content_legal_ground"),
    *("decision_ground_reference_url", "content_language"),
)
_INCOMPATIBLE_TEXT = "incompatible_content_ground"
# Whether the ground is DECISION_GROUND_ILLEGAL -> the ground text the statement must carry.
_GROUND_TEXT_OPTION = {False: _INCOMPATIBLE_TEXT, True: "illegal_content_legal_ground"}


@dataclass(frozen=True)
class DsaOptions:
    """Platform-level settings of the export (the same for every tenant)."""

    puid_salt: str  # platform secret: PUIDs cannot be traced back to event ids without it
    decision_ground: str = DECISION_GROUND_INCOMPATIBLE
    incompatible_content_ground: str = "Terms of service: content policy for uploaded images"
    illegal_content_legal_ground: str | None = None  # required with DECISION_GROUND_ILLEGAL
    decision_ground_reference_url: str | None = None
    territorial_scope: tuple[str, ...] = EU_COUNTRIES  # EU-27; add IS, LI, NO for the EEA
    content_language: str | None = None
    visibility_block: str = "DECISION_VISIBILITY_CONTENT_REMOVED"
    visibility_review: str = "DECISION_VISIBILITY_CONTENT_DISABLED"
    error_category: str = "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"

    def __post_init__(self) -> None:
        if len(self.puid_salt) < MIN_SALT_CHARS:
            raise ConfigError(f"DSA PUID salt: at least {MIN_SALT_CHARS} characters")
        # The API trims every string and treats a blank one as missing: so do we, up front.
        for name in _TEXT_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, str):
                text = trim(value)  # the one `str` field stays a (possibly empty) str
                object.__setattr__(self, name, text if name == _INCOMPATIBLE_TEXT else text or None)
        ground_text = _GROUND_TEXT_OPTION[self.decision_ground == DECISION_GROUND_ILLEGAL]
        if self.decision_ground in DECISION_GROUNDS and not getattr(self, ground_text):
            raise DsaOptionError(
                ground_text,
                f"required with {self.decision_ground}, and blank or missing (the database "
                "would refuse every statement)",
            )
        if "DECISION_VISIBILITY_OTHER" in (self.visibility_block, self.visibility_review):
            raise ConfigError("DSA visibility: DECISION_VISIBILITY_OTHER needs a text; not offered")
        # The fields these options fill, checked by the statement validator itself.
        visibility = list(dict.fromkeys([self.visibility_block, self.visibility_review]))
        probe: dict[str, Any] = {
            "decision_ground": self.decision_ground,
            "incompatible_content_ground": self.incompatible_content_ground,
            "illegal_content_legal_ground": self.illegal_content_legal_ground,
            "decision_ground_reference_url": self.decision_ground_reference_url,
            "territorial_scope": list(self.territorial_scope),
            "content_language": self.content_language,
            "decision_visibility": visibility,
            "category": self.error_category,
        }
        for problem in validate_statement(probe):
            name, _, text = problem.partition(": ")
            if name in probe:
                raise DsaOptionError(name, text)


@dataclass(frozen=True)
class TenantDsa:
    """A tenant's DSA mapping (policy `dsa` section) and the surfaces its policy declares."""

    categories: Mapping[str, str]  # "O1".."O9", "NA" -> STATEMENT_CATEGORY_*
    review_restricts_visibility: bool = False
    surfaces: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_policy(cls, resolved: ResolvedPolicy, surfaces: Iterable[str] = ()) -> TenantDsa:
        return cls(
            dict(resolved.dsa_categories), resolved.review_restricts_visibility, frozenset(surfaces)
        )


def puid_for(tenant_id: str, event_id: str, salt: str) -> str:
    """HMAC-SHA256(salt, tenant + event id), base64url without padding: 48 characters of
    [A-Za-z0-9_-], the same on every run, unique per event, not reversible without the salt."""
    digest = hmac.new(salt.encode(), f"{tenant_id}\n{event_id}".encode(), hashlib.sha256).digest()
    return PUID_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def skip_reason(record: Mapping[str, Any], mapping: TenantDsa) -> str | None:
    """Why a record yields no statement (`allow`, `review_visible`, `no_content`), or None."""
    verdict = _verdict(record)
    decision = verdict.get("decision")
    if decision == "allow":
        return "allow"
    if decision == "review" and not mapping.review_restricts_visibility:
        return "review_visible"
    if decision not in ("review", "block"):
        raise DsaExportError(f"unknown decision {decision!r}")
    if _error_code(verdict) in NO_CONTENT_ERRORS:
        return "no_content"
    return None


def kept_record(row: AuditRow) -> dict[str, Any]:
    """What a statement needs of a redacted row, from the columns retention keeps: the decision,
    its time, tenant and event id, the rating, category and score or the error code, the
    source, the surface, the policy version and whether a smoke-test model decided. The upload
    time is gone, so the statement is dated by its decision and says so (`content_date_for`)."""
    model = (
        {"engine": row.model_engine, "name": row.model_name, "smoke_test": row.model_smoke_test}
        if row.model_engine is not None
        else None
    )
    verdict = {
        "event_id": row.event_id,
        "tenant_id": row.tenant_id,
        "decision": row.decision,
        "decided_at": row.decided_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "error": {"code": row.error_code} if row.error_code is not None else None,
        "assessment": (
            {"rating": row.rating, "category": row.category, "score": row.score}
            if row.category is not None
            else None
        ),
        "policy": {"version": row.policy_version, "surface": row.surface},
        "source": row.source,
        "model": model,
    }
    return {"verdict": verdict, "uploaded_at": None}


def from_smoke_test_model(record: Mapping[str, Any]) -> bool:
    """Whether a smoke-test model (the `fake` engine, a checkpoint or server marked as one)
    decided: its decision means nothing, so a statement saying the image was assessed would be
    false. A verdict with no model (an error before the engine ran) was not decided by one."""
    model = _verdict(record).get("model")
    return isinstance(model, Mapping) and model.get("smoke_test") is True


def skip_without_mapping(record: Mapping[str, Any]) -> str | None:
    """Why a record yields no statement whatever its tenant's DSA mapping says (`allow`,
    `no_content`), or None: for a record whose tenant has no policy to map from (an
    `unknown_tenant` verdict always has none)."""
    verdict = _verdict(record)
    decision = verdict.get("decision")
    if decision == "allow":
        return "allow"
    if decision in ("review", "block") and _error_code(verdict) in NO_CONTENT_ERRORS:
        return "no_content"
    return None


def statement_for(
    record: Mapping[str, Any],
    mapping: TenantDsa,
    options: DsaOptions,
    policy_document: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The statement of reasons for one AuditRecord (JSON form), or None when the decision
    restricts nothing (see `skip_reason`). Raises DsaExportError for records it cannot map.
    The rule that restricted is read from the decision table of the compiled policy document
    the verdict was decided under: `policy_document` (a redacted record's, kept by the store),
    else the record's own."""
    if skip_reason(record, mapping) is not None:
        return None
    verdict = _verdict(record)
    block = verdict["decision"] == "block"
    error = _error_code(verdict)
    found: Assessed | None = None
    if error is not None:
        category = options.error_category
    else:
        found = _assessed(verdict, policy_document or _document(record))
        category = mapping.categories.get(found.code, "")
        if not category:
            raise DsaExportError(f"the tenant's dsa.categories has no entry for {found.code}")
    content_date, from_upload = content_date_for(record)
    why = explanation(found, error, block)
    statement: dict[str, Any] = {
        "decision_visibility": [options.visibility_block if block else options.visibility_review],
        "decision_ground": options.decision_ground,
    }
    if options.decision_ground_reference_url:
        statement["decision_ground_reference_url"] = options.decision_ground_reference_url
    if options.decision_ground == DECISION_GROUND_ILLEGAL:
        statement["illegal_content_legal_ground"] = options.illegal_content_legal_ground
        statement["illegal_content_explanation"] = why
    else:
        statement["incompatible_content_ground"] = options.incompatible_content_ground
        statement["incompatible_content_explanation"] = why
    statement |= {
        "content_type": ["CONTENT_TYPE_IMAGE"],
        "category": category,
        "territorial_scope": list(options.territorial_scope),
        "content_date": content_date,
        "application_date": _day(verdict["decided_at"], "decided_at"),
        "decision_facts": decision_facts(
            verdict, mapping.surfaces, found, error, block, upload_date_known=from_upload
        ),
        "source_type": SOURCE_VOLUNTARY,
        "automated_detection": "Yes",
        "automated_decision": "AUTOMATED_DECISION_FULLY",
        "puid": puid_for(str(verdict["tenant_id"]), str(verdict["event_id"]), options.puid_salt),
    }
    if options.content_language:
        statement["content_language"] = options.content_language
    return statement


def content_date_for(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The statement's `content_date` and whether it is the upload date.

    The UTC date of `uploaded_at` when it is usable: an ISO 8601 time with an offset, on a day
    the database accepts (CONTENT_DATES) and not after the decision. Otherwise the date of
    `decided_at`, our own clock's: the content existed by then, so it is the closest date known
    to be true. An unusable upload time comes from the producer (a sample event of 1970, a
    wrong clock) and costs only that statement its exact date, never the export."""
    verdict = _verdict(record)
    decided = _date(verdict["decided_at"], "decided_at")
    uploaded = record.get("uploaded_at")
    try:
        day = None if uploaded is None else _date(uploaded, "uploaded_at")
    except DsaExportError:
        day = None
    low, high = CONTENT_DATES
    if day is None or not low <= day <= min(high, decided):
        return decided.isoformat(), False
    return day.isoformat(), True


def batches(
    statements: Iterable[dict[str, Any]], size: int = BATCH_MAX
) -> Iterator[list[dict[str, Any]]]:
    """Consecutive groups of at most `size` (≤ 100, the API's limit per call)."""
    if not 1 <= size <= BATCH_MAX:
        raise ValueError(f"batch size must be 1..{BATCH_MAX}")
    batch: list[dict[str, Any]] = []
    for statement in statements:
        batch.append(statement)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- helpers -----------------------------------------------------------------------------------


def _verdict(record: Mapping[str, Any]) -> Mapping[str, Any]:
    verdict = record.get("verdict")
    if not isinstance(verdict, Mapping):
        raise DsaExportError("not an AuditRecord: no verdict")
    for name in ("event_id", "tenant_id", "decision", "decided_at"):
        if not verdict.get(name):
            raise DsaExportError(f"verdict.{name} is missing")
    return verdict


def _error_code(verdict: Mapping[str, Any]) -> str | None:
    error = verdict.get("error")
    return str(error.get("code")) if isinstance(error, Mapping) else None


def _assessed(verdict: Mapping[str, Any], document: Mapping[str, Any] | None) -> Assessed:
    """The assessment of a restricting verdict and the rule that restricted (`rule.assessed`)."""
    assessment = verdict.get("assessment")
    if not isinstance(assessment, Mapping) or not isinstance(assessment.get("category"), str):
        raise DsaExportError("a restricting decision without assessment or error")
    found = assessed(verdict, document)
    if found.rating == "Safe" and not found.by_score:
        raise DsaExportError(
            "rated Safe without a score, yet restricted: no rule of a policy gives that decision"
        )
    return found


def _document(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    found = record.get("policy_document")
    return found if isinstance(found, Mapping) else None


def _day(value: Any, name: str) -> str:
    return _date(value, name).isoformat()


def _date(value: Any, name: str) -> date:
    """The UTC date of an ISO 8601 time with an offset."""
    try:
        moment = datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            raise DsaExportError(f"{name}: no time zone")
        return moment.astimezone(UTC).date()
    except (ValueError, OverflowError) as exc:  # OverflowError: year 1 or 9999 moved to UTC
        raise DsaExportError(f"{name}: not an ISO 8601 timestamp") from exc
