"""The message values `moderator dev-stack upload --shape` produces: one written object announced
the way each producer the service accepts announces it (docs/architecture.md, "Topics and
schemas").

- `native`: the UploadEvent v1 itself;
- `s3`: an S3 event notification (`{"Records": [...]}`, event version 2.1), the key URL-encoded
  as S3 encodes it (a space as `+`, `/` kept);
- `eventbridge`: S3's "Object Created" event as EventBridge delivers it (the key as it is);
- `sns-s3`, `sns-eventbridge`, `sns-native`: an SNS Notification envelope (no raw message
  delivery) whose `Message` is the named shape as a JSON string.

Only the standard library is imported: the CLI reads SHAPES to build its parser.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

SHAPES = ("native", "s3", "eventbridge", "sns-s3", "sns-eventbridge", "sns-native")
# The shapes that hold the UploadEvent, and so its context.surface; the others are the store's.
NATIVE_SHAPES = frozenset({"native", "sns-native"})
# How each shape is named in what `dev-stack upload` prints.
SHAPE_NAMES = {
    "native": "an UploadEvent",
    "s3": "an S3 event notification",
    "eventbridge": "an EventBridge event",
    "sns-s3": "an SNS envelope around an S3 event notification",
    "sns-eventbridge": "an SNS envelope around an EventBridge event",
    "sns-native": "an SNS envelope around an UploadEvent",
}
# The dev stack's made-up AWS account and region, and the names built from them.
ACCOUNT = "123456789012"
REGION = "us-east-1"
SNS_TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:moderator-dev-uploads"
_ISO_MS = "%Y-%m-%dT%H:%M:%S.%f"


def s3_key(key: str) -> str:
    """An object key as S3 writes it into a notification: form-URL-encoded, `/` kept."""
    return quote_plus(key, safe="/")


def sequencer() -> str:
    """A fresh sequencer: hex digits that grow with each write, as S3's do."""
    return f"{time.time_ns():018X}"


def shaped_value(
    shape: str,
    native: dict[str, Any],
    *,
    etag: str | None,
    seq: str,
    now: datetime | None = None,
) -> bytes:
    """The message value announcing the object of `native` (an UploadEvent v1 as JSON data) in
    `shape`. `etag` is the object's ETag without quotes, `seq` its sequencer. ValueError for
    another shape."""
    at = now or datetime.now(UTC)
    if shape == "native":
        return json.dumps(native).encode()
    if shape.startswith("sns-"):
        inner = shaped_value(shape.removeprefix("sns-"), native, etag=etag, seq=seq, now=at)
        return json.dumps(_sns(inner.decode(), shape, at)).encode()
    obj = native["object"]
    if shape == "s3":
        doc = _s3_notification(obj, etag, seq, at)
    elif shape == "eventbridge":
        doc = _eventbridge(obj, etag, seq, at)
    else:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    return json.dumps(doc).encode()


def _time(at: datetime) -> str:
    """`2026-05-01T12:00:00.123Z`, as S3 and SNS write times."""
    return at.astimezone(UTC).strftime(_ISO_MS)[:-3] + "Z"


def _s3_notification(
    obj: dict[str, Any], etag: str | None, seq: str, at: datetime
) -> dict[str, Any]:
    bucket = obj["bucket"]
    s3_object: dict[str, Any] = {"key": s3_key(obj["key"]), "size": obj["size"]}
    if etag:
        s3_object["eTag"] = etag
    if obj.get("version_id"):  # sent for versioned buckets only
        s3_object["versionId"] = obj["version_id"]
    s3_object["sequencer"] = seq
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": _time(at),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAMODERATORDEV"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
            "x-amz-id-2": base64.b64encode(uuid.uuid4().bytes).decode(),
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "moderator-dev-uploads",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "AMODERATORDEV"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": s3_object,
        },
    }
    return {"Records": [record]}


def _eventbridge(obj: dict[str, Any], etag: str | None, seq: str, at: datetime) -> dict[str, Any]:
    bucket = obj["bucket"]
    detail_object: dict[str, Any] = {"key": obj["key"], "size": obj["size"]}
    if etag:
        detail_object["etag"] = etag
    if obj.get("version_id"):
        detail_object["version-id"] = obj["version_id"]
    detail_object["sequencer"] = seq
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": ACCOUNT,
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": detail_object,
            "request-id": uuid.uuid4().hex[:16].upper(),
            "requester": ACCOUNT,
            "source-ip-address": "127.0.0.1",
            "reason": "PutObject",
        },
    }


def _sns(message: str, shape: str, at: datetime) -> dict[str, Any]:
    """An SNS Notification envelope; its signature is a placeholder (the service does not check
    it). S3 publishes with the subject `Amazon S3 Notification`; the others without one."""
    message_id = str(uuid.uuid4())
    doc: dict[str, Any] = {"Type": "Notification", "MessageId": message_id}
    doc["TopicArn"] = SNS_TOPIC_ARN
    if shape == "sns-s3":
        doc["Subject"] = "Amazon S3 Notification"
    endpoint = f"https://sns.{REGION}.amazonaws.com"
    doc |= {
        "Message": message,
        "Timestamp": _time(at),
        "SignatureVersion": "1",
        "Signature": base64.b64encode(b"moderator dev-stack: not signed").decode(),
        "SigningCertURL": f"{endpoint}/SimpleNotificationService-dev.pem",
        "UnsubscribeURL": (
            f"{endpoint}/?Action=Unsubscribe&SubscriptionArn={SNS_TOPIC_ARN}:{message_id}"
        ),
    }
    return doc
