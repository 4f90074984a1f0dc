"""Audit rows as they leave the process: JSON lines, CSV and the HTTP API share one shape."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from moderator.audit.models import AuditRow


class VerdictColumns(BaseModel):
    """The indexed columns of an audit row that say what was decided: what operators and the
    tenants' API clients both see."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    tenant_id: str
    decided_at: datetime
    decision: str = Field(description="allow | review | block")
    object_bucket: str | None
    object_key: str | None = Field(description="null once redacted")
    sha256: str | None
    rating: str | None
    category: str | None
    score: float | None
    policy_version: str | None = Field(description="16-hex prefix of policy_hash")
    policy_hash: str | None
    model_engine: str | None
    model_name: str | None
    model_smoke_test: bool | None
    error_code: str | None
    source: str | None = Field(
        description=(
            "model | cache | error: the engine judged the image, the verdict cache answered, or "
            "there was no usable assessment and on_error decided (records written before "
            "`error` existed say model)"
        )
    )
    surface: str | None


class AuditItem(VerdictColumns):
    """One audit row: every column of it (its indexed columns, chain position and hashes), and
    the full AuditRecord (`record`), which is null once the row was redacted by retention.
    Left out: `policy_elided`, how the store keeps the record's policy document (once, in
    policy_versions), which `record` holds again."""

    category_code: str | None = Field(description="the category's code: O4 for O4: ...")
    topic: str = Field(description="audit topic of the record (its hash chain)")
    partition: int
    offset: int
    seq: int = Field(description="1-based position in the (topic, partition) hash chain")
    record_hash: str
    columns_hash: str | None = Field(description="null on rows stored before schema version 3")
    prev_hash: str
    row_hash: str
    redacted_at: datetime | None
    id: int = Field(description="the store's row id")
    record: dict[str, Any] | None = Field(description="the AuditRecord v1; null once redacted")

    @classmethod
    def from_row(cls, row: AuditRow) -> AuditItem:
        return cls.model_validate({f.name: getattr(row, f.name) for f in fields(row)})


SCALAR_COLUMNS: tuple[str, ...] = tuple(name for name in AuditItem.model_fields if name != "record")
"""The CSV columns: everything but the record."""
