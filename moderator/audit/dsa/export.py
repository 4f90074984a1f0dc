"""Audit records → DSA statements of reasons (EU Transparency Database, schema of 1 July 2025).

Pure: no database, no network. What goes out is built only from closed sets and our own
templates: the decision, the mapped statement category, the taxonomy's category name, the policy
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
from datetime import UTC, datetime
from typing import Any

from moderator.audit.dsa.facts import decision_facts, explanation
from moderator.audit.dsa.spec import (
    AUTOMATED_DECISION,
    AUTOMATED_DETECTION,
    BATCH_MAX,
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
    validate_statement,
)
from moderator.errors import ConfigError, ModeratorError
from moderator.events.verdict import category_code
from moderator.policy.model import ResolvedPolicy

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
    "DsaOptions",
    "TenantDsa",
    "batches",
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
        illegal = self.decision_ground == DECISION_GROUND_ILLEGAL
        if illegal and not self.illegal_content_legal_ground:
            raise ConfigError(f"DSA {DECISION_GROUND_ILLEGAL} needs illegal_content_legal_ground")
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
            if problem.split(":", 1)[0] in probe:
                raise ConfigError(f"DSA option {problem}")


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


def statement_for(
    record: Mapping[str, Any], mapping: TenantDsa, options: DsaOptions
) -> dict[str, Any] | None:
    """The statement of reasons for one AuditRecord (JSON form), or None when the decision
    restricts nothing (see `skip_reason`). Raises DsaExportError for records it cannot map."""
    if skip_reason(record, mapping) is not None:
        return None
    verdict = _verdict(record)
    block = verdict["decision"] == "block"
    error = _error_code(verdict)
    if error is not None:
        category = options.error_category
        code = None
    else:
        code = _assessed_code(verdict)
        category = mapping.categories.get(code, "")
        if not category:
            raise DsaExportError(f"the tenant's dsa.categories has no entry for {code}")
    decided = _day(verdict.get("decided_at"), "decided_at")
    uploaded = record.get("uploaded_at")
    why = explanation(code, error, block)
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
        "content_date": _day(uploaded, "uploaded_at") if uploaded else decided,
        "application_date": decided,
        "decision_facts": decision_facts(verdict, mapping.surfaces, code, error, block),
        "source_type": SOURCE_VOLUNTARY,
        "automated_detection": "Yes",
        "automated_decision": "AUTOMATED_DECISION_FULLY",
        "puid": puid_for(str(verdict["tenant_id"]), str(verdict["event_id"]), options.puid_salt),
    }
    if options.content_language:
        statement["content_language"] = options.content_language
    return statement


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


def _assessed_code(verdict: Mapping[str, Any]) -> str:
    assessment = verdict.get("assessment")
    if not isinstance(assessment, Mapping) or not isinstance(assessment.get("category"), str):
        raise DsaExportError("a restricting decision without assessment or error")
    return category_code(assessment["category"])


def _day(value: Any, name: str) -> str:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise DsaExportError(f"{name}: not an ISO 8601 timestamp") from exc
    if moment.tzinfo is None:
        raise DsaExportError(f"{name}: no time zone")
    return moment.astimezone(UTC).date().isoformat()
