"""The typed explanation of one verdict: what was judged, under which rule, and what came out.

Every field is what the audit record (or the policy document stored with it) says, or None when
it does not say it; `missing` names what could not be shown and why. Pure dataclasses; JSON and
text come from `render`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from moderator.errors import ErrorCode

RowValue = str | float | None
"""A decision-table row field's value: a mode or action, a threshold, or none."""

RuleKind = Literal["threshold", "rating", "on_error", "unknown"]
"""How the decision was reached: a score against the category row's thresholds, the rating and
the row's action, the policy's on_error rule for an error verdict, or not known (no decision
table to read)."""


@dataclass(frozen=True)
class InputFacts:
    """The upload as the verdict names it."""

    surface: str | None
    bucket: str | None
    key: str | None  # None once redacted
    version_id: str | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    uploaded_at: datetime | None


@dataclass(frozen=True)
class TableRow:
    """The decision-table row an assessment selects: a category O1..O9, or NA (`none_applying`,
    which also takes unknown categories; it has no mode)."""

    category: str
    mode: str | None
    action: str
    block_at: float | None
    review_at: float | None


@dataclass(frozen=True)
class RowOrigin:
    """Where the values of a decision-table row were set, read from the policy files.

    The compiled document records values, not where they came from, so this is only known when
    the policy files still compile to the recorded version (then they are the files that
    decided). `set_by` maps each row field (mode, action, block_at, review_at) to the place that
    last set it (`surfaces.comments in acme.yaml`, `default.yaml`; `built-in` when no file
    does). `surface` is the event's surface when an override of that surface set one of the
    row's fields (else None), and `overrides` what it changed: field -> (value on the tenant's
    default surface, value here).
    """

    surface: str | None
    set_by: Mapping[str, str]
    overrides: Mapping[str, tuple[RowValue, RowValue]] = field(default_factory=dict)
    # The event's surface when no file of the tenant's chain declares it: the tenant's default
    # surface's rules decided (else None).
    undeclared_surface: str | None = None


def has_origin(e: Explanation) -> bool:
    """Whether a file of the tenant's chain set what decided: a decision-table row, or an
    error verdict's on_error action (not `unknown_tenant`'s: the default policy decides it, for
    a tenant without a chain)."""
    if e.policy.row is not None:
        return True
    error = e.error
    unknown = ErrorCode.UNKNOWN_TENANT.value
    return error is not None and error.code != unknown and e.policy.on_error is not None


@dataclass(frozen=True)
class PolicyFacts:
    version: str | None
    hash: str | None
    document_kept: bool  # the compiled policy document was found (in the record or the store)
    row: TableRow | None  # for an assessment, when the decision table could be read
    on_error: str | None  # for an error verdict: the table's decision for its code
    row_origin: RowOrigin | None = None  # None: not known (no policy files matching the version)
    # Why row_origin is None though a row was read, and how to show it; None when not looked for.
    origin_not_shown: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    engine: str
    name: str | None
    smoke_test: bool  # a fake or random-weight model: its decisions mean nothing
    revision: str | None = None  # the checkpoint's, from the record (gone once redacted)


@dataclass(frozen=True)
class AssessmentFacts:
    rating: str | None
    category: str | None
    score: float | None
    rationale: str | None  # None once redacted (the row keeps rating, category and score)


@dataclass(frozen=True)
class ErrorFacts:
    code: str
    message: str | None  # None once redacted
    security: bool  # a code no policy may map to allow


@dataclass(frozen=True)
class CacheFacts:
    """A verdict answered from the verdict cache: the assessment of the same bytes, model input
    and model was reused. `original_*`: the earliest model judgement of them in the tenant's
    audit rows, when one was looked up and found."""

    looked_up: bool
    original_event_id: str | None = None
    original_decided_at: datetime | None = None


@dataclass(frozen=True)
class RuleFacts:
    """The rule that decided. `decision` is what the policy gives (None when unknown); for a
    threshold rule, `threshold` names the one compared (`block_at` or `review_at`) and
    `crossed` whether the score reached it. `capped`: the category is `allowed`, so a block
    became review."""

    kind: RuleKind
    decision: str | None
    threshold: Literal["block_at", "review_at"] | None = None
    threshold_value: float | None = None
    crossed: bool | None = None
    capped: bool = False


@dataclass(frozen=True)
class Explanation:
    event_id: str
    tenant_id: str
    decided_at: datetime | None
    decision: str  # what the verdict recorded
    source: str | None  # model | cache | error, as recorded
    input: InputFacts
    policy: PolicyFacts
    model: ModelFacts | None
    assessment: AssessmentFacts | None
    error: ErrorFacts | None
    cache: CacheFacts | None
    rule: RuleFacts
    redacted_at: datetime | None
    missing: tuple[str, ...]

    @property
    def matches_policy(self) -> bool | None:
        """Whether the policy's rule gives the recorded decision (None: the rule is unknown)."""
        return None if self.rule.decision is None else self.rule.decision == self.decision
