"""Adapter for Amazon EventBridge events from S3: an "Object Created" event becomes an UploadEvent.

S3 sends one event per object change when EventBridge is enabled on a bucket: an envelope
(`version`, `id`, `detail-type`, `source` = `aws.s3`, `account`, `time`, `region`, `resources`)
around `detail` {`bucket` {`name`}, `object` {`key`, `size`, `etag`, `version-id`, `sequencer`},
`reason`, ...}. Unlike a bucket notification, the object key is sent as it is, not URL-encoded.
"""

from __future__ import annotations

from typing import Any

from moderator.events.s3notify import (
    NotificationError,
    TenantRule,
    member,
    object_event,
    optional_str,
)
from moderator.events.upload import UploadEvent

S3_SOURCE = "aws.s3"
OBJECT_CREATED = "Object Created"
# `detail.reason` of an "Object Created" event, as the ObjectCreated event name of a bucket
# notification (`tenancy.content_events` selects among these names for both shapes).
REASON_EVENTS = {
    "PutObject": "Put",
    "POST Object": "Post",
    "CopyObject": "Copy",
    "CompleteMultipartUpload": "CompleteMultipartUpload",
}

# ObjectRef's field names as the event spells them, for error messages.
_FIELD_NAMES = {
    "bucket": "bucket.name",
    "key": "object.key",
    "version_id": "object.version-id",
    "etag": "object.etag",
    "size": "object.size",
}


def is_eventbridge(doc: Any) -> bool:
    """True for EventBridge event envelopes (any source or detail type)."""
    return isinstance(doc, dict) and "detail-type" in doc and "source" in doc


def events_from_eventbridge(doc: dict[str, Any], rule: TenantRule) -> tuple[list[UploadEvent], int]:
    """The UploadEvent of an S3 "Object Created" event, and how many events were skipped.

    Other S3 detail types (deletions, tag changes, restores, ...), an "Object Created" event
    whose `reason` is missing or names no event in `rule.content_events`, and one whose
    `detail.object.key` is missing, null or empty are skipped (one each). Raises
    NotificationError for another source or an event that is otherwise unusable.
    """
    source = doc.get("source")
    if source != S3_SOURCE:
        raise NotificationError(f"source is {str(source)[:60]!r}, not {S3_SOURCE!r}")
    if doc.get("detail-type") != OBJECT_CREATED:
        return [], 1
    detail = member(doc, "detail", dict, "event")
    reason = detail.get("reason")
    if not isinstance(reason, str) or REASON_EVENTS.get(reason) not in rule.content_events:
        return [], 1
    obj = member(detail, "object", dict, "detail")
    key = optional_str(obj, "key", "detail.object")
    if key is None:
        return [], 1
    event = object_event(
        rule,
        "detail",
        _FIELD_NAMES,
        bucket=member(member(detail, "bucket", dict, "detail"), "name", str, "detail.bucket"),
        key=key,
        version=optional_str(obj, "version-id", "detail.object"),
        sequencer=optional_str(obj, "sequencer", "detail.object"),
        etag=optional_str(obj, "etag", "detail.object"),
        size=obj.get("size"),
        content_type=None,
        event_time=doc.get("time"),
    )
    return [event], 0
