"""UploadEvent v1: the native upload event (docs/architecture.md, "Topics and schemas")."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TENANT_ID_RULE = (
    "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters"
)
MAX_CONTEXT_EXTRA_BYTES = 16 * 1024
"""The most the context's own members (those other than surface and user_id) may hold as JSON:
the audit record copies the context, and an audit record must stay within one Kafka record."""


def tenant_id_problem(tenant: str) -> str | None:
    """Why `tenant` cannot be a tenant id (for a flag's message); None when it can."""
    if re.fullmatch(TENANT_ID_PATTERN, tenant):
        return None
    return f"{tenant!r} is not a tenant id: {TENANT_ID_RULE}"


class ObjectRef(BaseModel):
    """Where the uploaded object lives."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    bucket: str = Field(min_length=1, max_length=255)
    key: str = Field(min_length=1, max_length=1024)
    version_id: str | None = Field(default=None, max_length=1024)
    etag: str | None = Field(default=None, max_length=1024)
    # An integral float such as 9007199254740992.0 is I-JSON but would become an integer the
    # audit trail's canonical JSON cannot hold: the same bound as the parser's integers.
    size: int | None = Field(default=None, ge=0, le=2**53 - 1, strict=True)
    content_type: str | None = Field(default=None, max_length=1024)

    @field_validator("bucket")
    @classmethod
    def _one_bucket(cls, bucket: str) -> str:
        # The records' key is `{tenant}:{bucket}/{key}`, compacted to one verdict per object:
        # a '/' in the bucket would let another event's bucket and key name the same record.
        # No object store takes '/' or control characters in a bucket name.
        if "/" in bucket or any(ord(ch) < 32 or ord(ch) == 127 for ch in bucket):
            raise ValueError("a bucket name has no '/' and no control characters")
        return bucket


class UploadContext(BaseModel):
    """Optional context; `surface` selects policy overrides."""

    model_config = ConfigDict(frozen=True, extra="allow")

    surface: str | None = Field(default=None, max_length=64)
    user_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _extra_bounded(self) -> UploadContext:
        extra = self.model_extra
        if extra:
            size = len(json.dumps(extra, ensure_ascii=False).encode())
            if size > MAX_CONTEXT_EXTRA_BYTES:
                raise ValueError(
                    f"its other members are {size} bytes as JSON "
                    f"(limit {MAX_CONTEXT_EXTRA_BYTES}; the audit record copies them)"
                )
        return self


class UploadEvent(BaseModel):
    """One uploaded object to judge. `event_id` is the idempotency key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    tenant_id: str = Field(pattern=TENANT_ID_PATTERN)
    object: ObjectRef
    uploaded_at: AwareDatetime | None = None
    context: UploadContext = Field(default_factory=UploadContext)
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("uploaded_at")
    @classmethod
    def _convertible_to_utc(cls, value: datetime | None) -> datetime | None:
        """Year 1 or 9999 with an offset has no UTC time; reports convert every time to UTC."""
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError as exc:
                raise ValueError("time is out of range in UTC") from exc
        return value

    @property
    def surface(self) -> str:
        return self.context.surface or "default"

    @property
    def output_key(self) -> str:
        """Key of the verdict and audit records: `{tenant_id}:{bucket}/{key}`."""
        return f"{self.tenant_id}:{self.object.bucket}/{self.object.key}"
