"""Adapter for S3 / MinIO bucket notifications: each ObjectCreated record becomes an UploadEvent."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from moderator.events.upload import TENANT_ID_PATTERN, ObjectRef, UploadEvent

_TENANT_RE = re.compile(TENANT_ID_PATTERN)


class NotificationError(ValueError):
    """A record that claims to be an S3 notification but cannot be turned into an event."""


@dataclass(frozen=True)
class TenantRule:
    """How a notification's tenant is found: first key segment, or a bucket→tenant map."""

    kind: Literal["key_prefix", "bucket_map"] = "key_prefix"
    bucket_map: dict[str, str] = field(default_factory=dict)

    def tenant_for(self, bucket: str, key: str) -> str:
        if self.kind == "bucket_map":
            tenant = self.bucket_map.get(bucket)
            if tenant is None:
                raise NotificationError(f"bucket {bucket!r} is not in the bucket→tenant map")
        else:
            tenant = key.split("/", 1)[0] if "/" in key else ""
        if not _TENANT_RE.match(tenant):
            raise NotificationError(f"no valid tenant id for s3://{bucket}/{key}")
        return tenant


def is_notification(doc: Any) -> bool:
    """True for S3/MinIO notification documents (including `s3:TestEvent`)."""
    return isinstance(doc, dict) and ("Records" in doc or doc.get("Event") == "s3:TestEvent")


def derive_event_id(bucket: str, key: str, version: str | None, sequencer: str | None) -> str:
    """Deterministic id: a redelivered notification is the same event."""
    material = "\x00".join([bucket, key, version or "", sequencer or ""]).encode()
    return "s3-" + hashlib.sha256(material).hexdigest()[:40]


def events_from_notification(
    doc: dict[str, Any], rule: TenantRule
) -> tuple[list[UploadEvent], int]:
    """Return the UploadEvents of a notification and how many records were skipped.

    Raises NotificationError when an ObjectCreated record is unusable (the whole message then
    goes to the DLQ: partial acceptance would make the DLQ record ambiguous).
    """
    records = doc.get("Records")
    if records is None:  # s3:TestEvent
        return [], 1
    if not isinstance(records, list):
        raise NotificationError("Records is not a list")
    events: list[UploadEvent] = []
    skipped = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise NotificationError(f"Records[{index}] is not an object")
        name = str(record.get("eventName", ""))
        if not name.removeprefix("s3:").startswith("ObjectCreated:"):
            skipped += 1
            continue
        events.append(_event_from_record(record, index, rule))
    return events, skipped


def _event_from_record(record: dict[str, Any], index: int, rule: TenantRule) -> UploadEvent:
    try:
        s3 = record["s3"]
        bucket = str(s3["bucket"]["name"])
        obj = s3["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError) as exc:
        raise NotificationError(f"Records[{index}] lacks s3.bucket.name or s3.object.key") from exc
    version = obj.get("versionId") or None
    sequencer = obj.get("sequencer") or None
    uploaded_at = None
    if isinstance(record.get("eventTime"), str):
        try:
            parsed = datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00"))
            uploaded_at = parsed if parsed.tzinfo is not None else None
        except ValueError:
            uploaded_at = None
    try:
        return UploadEvent(
            event_id=derive_event_id(bucket, key, version, sequencer),
            tenant_id=rule.tenant_for(bucket, key),
            object=ObjectRef(
                bucket=bucket,
                key=key,
                version_id=version,
                etag=obj.get("eTag") or obj.get("etag") or None,
                size=obj.get("size"),
                content_type=obj.get("contentType") or None,
            ),
            uploaded_at=uploaded_at,
        )
    except ValueError as exc:
        if isinstance(exc, NotificationError):
            raise
        raise NotificationError(f"Records[{index}]: {exc}".splitlines()[0]) from exc
