"""What the audit HTTP API reads and returns (its OpenAPI schemas). Pure.

A tenant's token must learn nothing about other tenants, and the store's bookkeeping counts
every tenant's rows: the row id, the chain position (topic, partition, seq and the neighbouring
row hashes) and the Kafka offsets, of the audit topic and, inside the record, of the uploads
topic. `VerdictItem` is therefore an audit row without them; operators see them in
`moderator audit query`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

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


def _verdict_filters() -> type[BaseModel]:
    """The model of GET /v1/verdicts's query parameters: one per filter of the table, then the
    page. Unknown parameters are refused (422); a closed set of values is an enum (422 too)."""
    params: dict[str, Any] = {
        f.name: (
            (cast(Any, Literal)[f.choices] if f.choices else str) | None,
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
