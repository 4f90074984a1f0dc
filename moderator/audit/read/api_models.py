"""What the audit HTTP API reads and returns (its OpenAPI schemas). Pure.

A tenant's token must learn nothing about other tenants, and the store's bookkeeping counts
every tenant's rows: the row id, the chain position (topic, partition, seq and the neighbouring
row hashes) and the Kafka offsets, of the audit topic and, inside the record, of the uploads
topic. `VerdictItem` is therefore an audit row without them; operators see them in
`moderator audit query`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model

from moderator.audit.models import MAX_LIMIT, AuditRow, Sort
from moderator.audit.read.filters import FILTERS
from moderator.audit.read.rows import VerdictColumns

# Keys of the record's `input` (where the upload was read) that a tenant may see.
INPUT_KEPT = ("topic", "timestamp_ms")


class ErrorBody(BaseModel):
    detail: str = Field(description="why the request failed, one line")


class VerdictItem(VerdictColumns):
    """One verdict as a token of its tenant sees it: the indexed columns and the AuditRecord
    (`record`, null once the row was redacted by retention; its `input` keeps only the topic
    and timestamp)."""

    redacted_at: datetime | None
    record: dict[str, Any] | None = Field(
        description="the AuditRecord v1 without the upload's partition and offset; "
        "null once redacted"
    )

    @classmethod
    def from_row(cls, row: AuditRow) -> VerdictItem:
        values = {name: getattr(row, name) for name in cls.model_fields if name != "record"}
        return cls(**values, record=_tenant_record(row.record))


def _tenant_record(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    found = record.get("input")
    if not isinstance(found, dict):
        return record
    return {**record, "input": {k: v for k, v in found.items() if k in INPUT_KEPT}}


class VerdictPage(BaseModel):
    items: list[VerdictItem]
    next_cursor: str | None = Field(
        description="pass as `cursor` (with the same filters and sort) for the next page; "
        "null on the last page"
    )


class PolicyVersion(BaseModel):
    policy_hash: str = Field(description="SHA-256 hex of the compiled policy document")
    version: str = Field(description="its 16-hex prefix, as verdicts name it")
    tenant_id: str | None
    prompt: str | None = Field(description="the prompt text sent to the guard model")
    decision_table: Any = Field(description="category → action rules, as compiled")
    document: dict[str, Any] = Field(description="the whole compiled policy document")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


# -- GET /v1/verdicts/{event_id}/explanation: moderator.explanation/v1 (docs/explain.md) ------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExplanationInput(_Strict):
    surface: str | None
    bucket: str | None
    key: str | None = Field(description="null once redacted")
    version_id: str | None
    sha256: str | None
    format: str | None
    width: int | None
    height: int | None
    uploaded_at: str | None


class ExplanationRow(_Strict):
    category: str = Field(description="O1..O9, or NA (none_applying, also for unknown ones)")
    mode: str | None = Field(description="default | allowed | sensitive; null for NA")
    action: str = Field(description="what an Unsafe rating leads to without thresholds")
    block_at: float | None
    review_at: float | None


RowValue = str | float | None


class ExplanationOverride(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: RowValue = Field(alias="from", description="the value on the tenant's default surface")
    to: RowValue = Field(description="the value on the event's surface")


class ExplanationRowOrigin(_Strict):
    surface: str | None = Field(description="the event's surface when its override set a field")
    set_by: dict[str, str] = Field(
        description="field -> the file, or `surfaces.S in FILE`, that last set it"
    )
    overrides: dict[str, ExplanationOverride] = Field(
        description="field -> what the surface override changed"
    )
    undeclared_surface: str | None = Field(
        description="the event's surface when no file of the tenant declares it (its default "
        "surface's rules decided)"
    )


class ExplanationPolicy(_Strict):
    version: str | None
    hash: str | None
    document_kept: bool = Field(description="the compiled policy document was found")
    row: ExplanationRow | None = Field(description="the decision-table row of the category")
    on_error: str | None = Field(description="the table's decision for the error code")
    # Left out of the answer when unset (the route excludes unset fields), as the CLI does.
    row_origin: ExplanationRowOrigin | None = Field(
        None,
        description="where the row was set: present only while policies.dir still compiles "
        "to the verdict's policy version",
    )


class ExplanationModel(_Strict):
    engine: str
    name: str | None
    revision: str | None = None
    smoke_test: bool


class ExplanationAssessment(_Strict):
    rating: str | None
    category: str | None
    score: float | None
    rationale: str | None = Field(description="null once redacted")


class ExplanationError(_Strict):
    code: str
    message: str | None = Field(description="null once redacted")
    security: bool = Field(description="a code no policy may map to allow")


class ExplanationCache(_Strict):
    looked_up: bool
    original_event_id: str | None = Field(
        description="the earliest model judgement of the same image, policy version and model"
    )
    original_decided_at: str | None


class ExplanationRule(_Strict):
    kind: Literal["threshold", "rating", "on_error", "unknown"]
    decision: str | None = Field(description="what the rule gives; null when unknown")
    threshold: Literal["block_at", "review_at"] | None
    threshold_value: float | None
    crossed: bool | None
    capped: bool = Field(description="an allowed category: block became review")
    text: str


class ExplanationStep(_Strict):
    step: str
    text: str


class VerdictExplanation(_Strict):
    """Why a verdict was decided: the moderator.explanation/v1 document of `moderator explain`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["moderator.explanation/v1"] = Field(alias="schema")
    event_id: str
    tenant_id: str
    decided_at: str | None
    decision: str
    source: str | None
    input: ExplanationInput
    policy: ExplanationPolicy
    model: ExplanationModel | None
    assessment: ExplanationAssessment | None
    error: ExplanationError | None
    cache: ExplanationCache | None
    rule: ExplanationRule
    matches_policy: bool | None = Field(description="the rule gives the recorded decision")
    redacted_at: str | None
    missing: list[str] = Field(description="what could not be shown, and why")
    steps: list[ExplanationStep] = Field(description="the text output, one step a line")


def _verdict_filters() -> type[BaseModel]:
    """The model of GET /v1/verdicts's query parameters: one per filter of the table, then the
    page. Unknown parameters are refused (422); a closed set of values is an enum (422 too)."""
    # typing caches `X | None` by equality, and Literals of the same values are equal in any
    # order: a `Literal[...] | None` made elsewhere first (the policy's actions) would lend this
    # enum its order. Annotating the Literal with the filter's name makes the union this one's.
    params: dict[str, Any] = {
        f.name: (
            (Annotated[cast(Any, Literal)[f.choices], f.name] if f.choices else str) | None,
            Field(None, description=f.help),
        )
        for f in FILTERS
    }
    return create_model(
        "VerdictFilters",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Query parameters of GET /v1/verdicts (all optional, filters combined with AND).",
        **params,
        sort=(Sort, "-decided_at"),
        limit=(int, Field(100, ge=1, le=MAX_LIMIT)),
        cursor=(str | None, Field(None, description="next_cursor of the previous page")),
    )


# mypy needs a class it can see; FastAPI reads the generated model (its fields are the table's).
if TYPE_CHECKING:
    VerdictFilters = BaseModel
else:
    VerdictFilters = _verdict_filters()
