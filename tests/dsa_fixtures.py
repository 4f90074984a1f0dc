"""AuditRecord JSON for the DSA export tests, with personal data planted where records keep it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from moderator.errors import ErrorCode
from moderator.events.verdict import (
    Assessment,
    AuditRecord,
    InputCoords,
    PolicyRef,
    Verdict,
    VerdictError,
    VerdictObject,
)

DECIDED_AT = datetime(2026, 11, 29, 2, 0, 1, tzinfo=UTC)
RATIONALE = "The picture shows Jane Roe from 12 Elm Street without clothes"
USER_ID = "u-private-4711"
OBJECT_KEY = "acme/2026/11/29/jane-roe-holiday.jpg"
RAW_OUTPUT = '{"rating":"Unsafe","rationale":"raw model text about Jane Roe"}'
ERROR_MESSAGE = "cannot identify image file 'acme/2026/11/29/jane-roe-holiday.jpg'"
SECRETS = ("Jane Roe", "Elm Street", USER_ID, OBJECT_KEY, "jane-roe", "raw model text", "ev-0001")


def record(
    decision: str = "block",
    *,
    category: str | None = "O4: Nudity Content",
    source: str = "model",
    error: ErrorCode | None = None,
    surface: str = "profile_photo",
    uploaded_at: datetime | None = datetime(2026, 11, 29, 2, 0, tzinfo=UTC),
    event_id: str = "ev-0001",
    tenant: str = "acme",
    decided_at: datetime = DECIDED_AT,
) -> dict[str, Any]:
    """An AuditRecord in its JSON form, as the audit store keeps it."""
    verdict = Verdict(
        event_id=event_id,
        tenant_id=tenant,
        object=VerdictObject(bucket="uploads", key=OBJECT_KEY, sha256="ab" * 32),
        decision=decision,  # type: ignore[arg-type]
        assessment=(
            None
            if category is None
            else Assessment(rating="Unsafe", category=category, rationale=RATIONALE, score=0.9)
        ),
        policy=PolicyRef(tenant_id=tenant, surface=surface, version="6c1f8e8704d0b0c9"),
        model=None,
        source=source,  # type: ignore[arg-type]
        error=None if error is None else VerdictError(code=error, message=ERROR_MESSAGE),
        decided_at=decided_at,
        trace_id="0" * 32,
    )
    audit = AuditRecord(
        verdict=verdict,
        uploaded_at=uploaded_at,
        context={"surface": surface, "user_id": USER_ID},
        input=InputCoords(topic="uploads", partition=0, offset=7),
        instance_id="pod-1",
        package_version="0.1.0",
        policy_hash="f" * 64,
        prompt_sha256="e" * 64,
        raw_output=RAW_OUTPUT,
    )
    data: dict[str, Any] = json.loads(audit.to_json())
    return data
