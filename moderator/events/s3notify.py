"""Adapter for S3 / MinIO bucket notifications: each ObjectCreated record becomes an UploadEvent.

It also holds what every store-sent shape shares (`events.eventbridge`, `events.sns`): the tenant
rule, the content-event names, the event id rule and the building of one UploadEvent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import unquote_plus

from pydantic import ValidationError

from moderator.events.upload import TENANT_ID_PATTERN, ObjectRef, UploadEvent

_TENANT_RE = re.compile(TENANT_ID_PATTERN)
MAX_RECORDS = 1000
# The ObjectCreated events that write an object's content (AWS names these four); the default of
# `tenancy.content_events`. MinIO also files tag, retention and legal-hold changes under
# ObjectCreated (PutTagging, DeleteTagging, PutRetention, PutLegalHold): the content is
# unchanged, so those are skipped like any other event, never judged again (a service that
# writes verdicts back as tags would loop).
CONTENT_EVENTS = frozenset({"Put", "Post", "Copy", "CompleteMultipartUpload"})

_T = TypeVar("_T")


class NotificationError(ValueError):
    """A record that claims to be an S3 notification but cannot be turned into an event."""


@dataclass(frozen=True)
class TenantRule:
    """How a store's event becomes an UploadEvent: the tenant (first key segment, or a
    bucket→tenant map) and the ObjectCreated event names that write content."""

    kind: Literal["key_prefix", "bucket_map"] = "key_prefix"
    bucket_map: dict[str, str] = field(default_factory=dict)
    content_events: frozenset[str] = CONTENT_EVENTS

    def tenant_for(self, bucket: str, key: str) -> str:
        if self.kind == "bucket_map":
            tenant = self.bucket_map.get(bucket)
            if tenant is None:
                raise NotificationError(f"bucket {bucket!r} is not in the bucket→tenant map")
        else:
            tenant = key.split("/", 1)[0] if "/" in key else ""
        if not _TENANT_RE.fullmatch(tenant):
            raise NotificationError(f"no valid tenant id for s3://{bucket}/{key}")
        return tenant


def is_notification(doc: Any) -> bool:
    """True for S3/MinIO notification documents (including `s3:TestEvent`)."""
    return isinstance(doc, dict) and ("Records" in doc or doc.get("Event") == "s3:TestEvent")


def derive_event_id(
    bucket: str,
    key: str,
    version: str | None,
    sequencer: str | None,
    *,
    etag: str | None = None,
    event_time: str | None = None,
) -> str:
    """Deterministic id: a redelivered notification is the same event, a new write another one.

    The version id and the sequencer change with every write. A store that sends neither gets
    the ETag and the event time (as sent) in the id instead, so two writes to one key differ; a
    record with a version id or a sequencer keeps the id it always had (etag and time unused).
    """
    material = [bucket, key, version or "", sequencer or ""]
    if not version and not sequencer:
        material += [etag or "", event_time or ""]
    digest = hashlib.sha256("\x00".join(material).encode("utf-8", "surrogatepass"))
    return "s3-" + digest.hexdigest()[:40]


def events_from_notification(
    doc: dict[str, Any], rule: TenantRule
) -> tuple[list[UploadEvent], int]:
    """Return the UploadEvents of a notification and how many records were skipped.

    Only records that write content become events (`creates_content`); the rest are skipped,
    and so is a record whose `s3.object.key` is missing, null or empty (it names no object:
    MinIO sends such records for replicated metadata changes). Raises NotificationError when a
    content record is otherwise unusable (the whole message then goes to the DLQ: partial
    acceptance would make the DLQ record ambiguous), or when there are more than MAX_RECORDS
    records (one message must not flood the pipeline), or none at all.
    """
    records = doc.get("Records")
    if records is None:  # s3:TestEvent
        return [], 1
    if not isinstance(records, list):
        raise NotificationError("Records is not a list")
    if len(records) > MAX_RECORDS:
        raise NotificationError(f"{len(records)} records (limit {MAX_RECORDS})")
    if not records:  # no store sends one; it would otherwise be committed without a trace
        raise NotificationError("Records is empty")
    events: list[UploadEvent] = []
    skipped = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise NotificationError(f"Records[{index}] is not an object")
        if not creates_content(record.get("eventName"), rule.content_events):
            skipped += 1
            continue
        event = _event_from_record(record, f"Records[{index}]", rule)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return events, skipped


def creates_content(event_name: object, content_events: frozenset[str] = CONTENT_EVENTS) -> bool:
    """Whether a record's eventName (`s3:ObjectCreated:Put`, `ObjectCreated:Copy`, ...) writes
    an object's content: one of `content_events` under ObjectCreated."""
    if not isinstance(event_name, str):
        return False
    kind, _, action = event_name.removeprefix("s3:").partition(":")
    return kind == "ObjectCreated" and action in content_events


def _event_from_record(record: dict[str, Any], where: str, rule: TenantRule) -> UploadEvent | None:
    s3 = member(record, "s3", dict, where)
    at = f"{where}.s3.object"
    obj = member(s3, "object", dict, f"{where}.s3")
    raw_key = optional_str(obj, "key", at)
    if raw_key is None:
        return None
    return object_event(
        rule,
        where,
        _FIELD_NAMES,
        bucket=member(member(s3, "bucket", dict, f"{where}.s3"), "name", str, f"{where}.s3.bucket"),
        key=_decoded_key(raw_key, at),
        version=optional_str(obj, "versionId", at),
        sequencer=optional_str(obj, "sequencer", at),
        etag=optional_str(obj, "eTag", at) or optional_str(obj, "etag", at),
        size=obj.get("size"),
        content_type=optional_str(obj, "contentType", at),
        event_time=record.get("eventTime"),
    )


def _decoded_key(raw_key: str, at: str) -> str:
    """The object key from its URL-encoded form in the notification. A `%XX` sequence that is
    not UTF-8 names no key S3 stores (it would come out as U+FFFD, another object): malformed."""
    try:
        return unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError:
        raise NotificationError(
            f"{at}.key: its %-escapes are not UTF-8 ({raw_key[:80]!r})"
        ) from None


# ObjectRef's field names as the notification spells them, for error messages.
_FIELD_NAMES = {
    "bucket": "s3.bucket.name",
    "key": "s3.object.key",
    "version_id": "s3.object.versionId",
    "etag": "s3.object.eTag",
    "size": "s3.object.size",
    "content_type": "s3.object.contentType",
}


def object_event(
    rule: TenantRule,
    where: str,
    field_names: Mapping[str, str],
    *,
    bucket: str,
    key: str,
    version: str | None,
    sequencer: str | None,
    etag: str | None,
    size: Any,
    content_type: str | None,
    event_time: Any,
) -> UploadEvent:
    """The UploadEvent of one written object, whichever shape named it.

    `field_names` spells ObjectRef's fields as the shape does, for error messages; `event_time`
    is the time as sent (an ISO 8601 string, or anything else: then unknown).
    """
    try:
        ref = ObjectRef(
            bucket=bucket,
            key=key,
            version_id=version,
            etag=etag,
            size=size,
            content_type=content_type,
        )
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        name = field_names.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else ""
        raise NotificationError(f"{where}.{name}: {err['msg']}") from exc
    time_text = event_time if isinstance(event_time, str) else None
    return UploadEvent(
        event_id=derive_event_id(bucket, key, version, sequencer, etag=etag, event_time=time_text),
        tenant_id=rule.tenant_for(bucket, key),
        object=ref,
        uploaded_at=_event_time(time_text),
    )


_KIND_NAMES: dict[type, str] = {dict: "an object", str: "a string"}


def member(doc: dict[str, Any], name: str, kind: type[_T], where: str) -> _T:
    """`doc[name]`, which must be present and of `kind`; `where` is the path of `doc`."""
    value = doc.get(name)
    if value is None:
        raise NotificationError(f"{where}.{name} is missing")
    if not isinstance(value, kind):
        raise NotificationError(f"{where}.{name} is not {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


def optional_str(obj: dict[str, Any], name: str, where: str) -> str | None:
    """An optional string member of `obj` (at path `where`); empty counts as absent, as S3
    sends it."""
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotificationError(f"{where}.{name} is not a string")
    return value


def _event_time(value: str | None) -> datetime | None:
    """eventTime when it is an ISO 8601 time with an offset; otherwise unknown (not an error)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            return None
        parsed.astimezone(UTC)  # year 1 or 9999 with an offset has no UTC time
    except (ValueError, OverflowError):
        return None
    return parsed
