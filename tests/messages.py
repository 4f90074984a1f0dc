"""Generated `uploads` messages for property tests: valid, mutated and hostile.

Valid UploadEvents, S3 notifications (AWS and MinIO shapes), EventBridge events and SNS
envelopes around either store shape are mutated by deleting or
replacing members with random JSON, adding members, and splicing in text that `json.dumps`
cannot write: nesting thousands deep, integers of thousands of digits, NaN, lone surrogates,
duplicate member names.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus

from hypothesis import strategies as st

TENANTS = ("acme", "kids", "news")
BUCKET = "uploads"
STORED_KEYS = tuple(f"{t}/img-{i}.png" for t in TENANTS for i in range(2))
NAMES = (
    "event_id",
    "tenant_id",
    "object",
    "bucket",
    "key",
    "size",
    "version_id",
    "etag",
    "uploaded_at",
    "context",
    "surface",
    "attributes",
    "Records",
    "Event",
    "EventName",
    "eventName",
    "eventTime",
    "s3",
    "name",
    "versionId",
    "sequencer",
    "eTag",
    "contentType",
    "detail-type",
    "source",
    "detail",
    "reason",
    "version-id",
    "etag",
    "time",
    "Type",
    "TopicArn",
    "Message",
)


class Raw:
    """JSON text spliced into a document as it is."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'…' if len(self.text) > 60 else ''})"


def dump(value: Any) -> str:
    """JSON text of `value`; `Raw` parts are written unchanged, lone surrogates as escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def _nested(depth: int, inner: str = "1") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


def _nested_objects(depth: int) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth)


hostile: st.SearchStrategy[Any] = st.one_of(
    st.integers(30, 6000).map(_nested),
    st.integers(30, 3000).map(_nested_objects),
    st.integers(15, 6000).map(lambda n: Raw("9" * n)),
    st.integers(15, 6000).map(lambda n: Raw("-1" + "0" * n)),
    st.sampled_from(
        [
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            Raw("1e400"),
            Raw("-1e999999"),
            Raw("9007199254740992"),
            Raw("9007199254740991"),
            Raw("1" + "0" * 400 + ".5"),
            Raw('"\\ud800"'),
            Raw('"\\udfff\\ud800"'),
            Raw('"\\ud83d\\ude00"'),
            Raw('{"a":1,"a":2}'),
            Raw('"\\u0000\\n\\u2028"'),
        ]
    ),
    st.text(st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=3),
)

leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.text(st.characters(codec=None), max_size=8),
    st.sampled_from(
        [
            "",
            "acme",
            "acme/a.jpg",
            "s3:ObjectCreated:Put",
            "2026-11-29T02:00:00Z",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
        ]
    ),
)

member_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(NAMES), st.text(max_size=8), st.text(st.characters(codec=None), max_size=4)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(leaves, hostile),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(member_names, inner, max_size=4)
    ),
    max_leaves=12,
)

_event_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
_tenant_ids = st.one_of(st.sampled_from(TENANTS), st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"))
_times = st.sampled_from(
    ["2026-11-29T02:00:00Z", "2026-11-29T02:00:00.123+05:30", "2000-01-01T00:00:00-12:00"]
)


@st.composite
def upload_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid native UploadEvent document, often for a stored object of a known tenant."""
    if draw(st.booleans()):
        key = draw(st.sampled_from(STORED_KEYS))
        tenant = key.split("/", 1)[0]
    else:
        key = draw(st.text(min_size=1, max_size=40))
        tenant = draw(_tenant_ids)
    obj: dict[str, Any] = {"bucket": BUCKET, "key": key}
    if draw(st.booleans()):
        obj["size"] = draw(st.integers(0, 2**53 - 1))
    if draw(st.booleans()):
        obj["version_id"] = draw(st.text(max_size=10))
    doc: dict[str, Any] = {"event_id": draw(_event_ids), "tenant_id": tenant, "object": obj}
    if draw(st.booleans()):
        doc["uploaded_at"] = draw(_times)
    if draw(st.booleans()):
        doc["context"] = {
            "surface": draw(st.sampled_from(["default", "profile_photo", "chat"])),
            "extra": draw(st.integers(-(2**53) + 1, 2**53 - 1)),
        }
    if draw(st.booleans()):
        doc["attributes"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
    return doc


@st.composite
def s3_records(draw: st.DrawFn) -> dict[str, Any]:
    """One AWS/MinIO notification record (ObjectCreated or another event)."""
    if draw(st.booleans()):
        raw_key = quote_plus(draw(st.sampled_from(STORED_KEYS)))
    else:
        path = f"{draw(st.sampled_from(TENANTS))}/{draw(st.text(min_size=1, max_size=20))}"
        raw_key = draw(st.sampled_from([quote_plus, quote]))(path)
    obj: dict[str, Any] = {"key": raw_key, "size": draw(st.integers(0, 10**9))}
    for name, value in (
        ("eTag", st.text("0123456789abcdef", min_size=32, max_size=32)),
        ("versionId", st.text(max_size=12)),
        ("sequencer", st.text("0123456789ABCDEF", min_size=16, max_size=16)),
        ("contentType", st.sampled_from(["image/png", "image/jpeg", ""])),
    ):
        if draw(st.booleans()):
            obj[name] = draw(value)
    if draw(st.booleans()):  # MinIO
        obj["userMetadata"] = {"content-type": "image/png"}
    event = draw(
        st.sampled_from(
            [
                "s3:ObjectCreated:Put",
                "ObjectCreated:Post",
                "ObjectCreated:CompleteMultipartUpload",
                "s3:ObjectCreated:Copy",
                "s3:ObjectCreated:PutTagging",  # MinIO: metadata only, skipped
                "s3:ObjectCreated:PutRetention",
                "s3:ObjectRemoved:Delete",
                "s3:ObjectAccessed:Get",
            ]
        )
    )
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": draw(st.sampled_from(["aws:s3", "minio:s3"])),
        "eventName": event,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
            "object": obj,
        },
    }
    if draw(st.booleans()):
        record["eventTime"] = draw(
            st.one_of(_times, st.text(max_size=10), st.just("9999-12-31T23:59:59-01:00"))
        )
    return record


@st.composite
def notification_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid S3 notification (AWS shape, MinIO's extra top-level members, or a test event)."""
    if draw(st.integers(0, 9)) == 7:  # rarely: hypothesis favours 0
        return {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}
    doc: dict[str, Any] = {"Records": draw(st.lists(s3_records(), min_size=1, max_size=3))}
    if draw(st.booleans()):  # MinIO
        doc = {"EventName": "s3:ObjectCreated:Put", "Key": f"{BUCKET}/x", **doc}
    return doc


EVENTBRIDGE_REASONS = ("PutObject", "POST Object", "CopyObject", "CompleteMultipartUpload")


@st.composite
def eventbridge_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid EventBridge event from S3: mostly "Object Created", the key as it is (not
    URL-encoded), any reason (those of EVENTBRIDGE_REASONS write content)."""
    if draw(st.booleans()):
        key = draw(st.sampled_from(STORED_KEYS))
    else:
        key = f"{draw(st.sampled_from(TENANTS))}/{draw(st.text(min_size=1, max_size=20))}"
    obj: dict[str, Any] = {"key": key, "size": draw(st.integers(0, 10**9))}
    for name, value in (
        ("etag", st.text("0123456789abcdef", min_size=32, max_size=32)),
        ("version-id", st.text(max_size=12)),
        ("sequencer", st.text("0123456789ABCDEF", min_size=16, max_size=18)),
    ):
        if draw(st.booleans()):
            obj[name] = draw(value)
    kind = draw(st.sampled_from(["Object Created"] * 3 + ["Object Deleted", "Object Tags Added"]))
    detail: dict[str, Any] = {"version": "0", "bucket": {"name": BUCKET}, "object": obj}
    if draw(st.integers(0, 5)):
        detail["reason"] = draw(st.sampled_from([*EVENTBRIDGE_REASONS, "DeleteObject"]))
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": kind,
        "source": "aws.s3",
        "account": "111122223333",
        "time": draw(st.one_of(_times, st.text(max_size=10))),
        "region": "eu-west-1",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": detail,
    }


@st.composite
def sns_docs(draw: st.DrawFn, inner: st.SearchStrategy[Any] | None = None) -> dict[str, Any]:
    """An SNS envelope whose Message is the JSON text of a document from `inner` (default: a
    valid S3 notification or EventBridge event)."""
    if inner is None:
        inner = st.one_of(notification_docs(), eventbridge_docs())
    message = draw(inner)
    return {
        "Type": "Notification",
        "MessageId": "e3a7c1d4-58b2-5f09-a6e3-1b9d7c2f4a80",
        "TopicArn": "arn:aws:sns:eu-west-1:111122223333:uploads-events",
        "Subject": "Amazon S3 Notification",
        "Message": dump(message),
        "Timestamp": "2026-03-14T09:45:27.311Z",
        "SignatureVersion": "1",
        "Signature": "c2lnbmF0dXJl",
    }


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every container in `doc` (the root included)."""
    found = [path]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        if isinstance(value, dict | list):
            found += _paths(value, (*path, key))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A document from `base` with one to three members deleted, replaced or added."""
    doc = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(doc, dict | list):
            break
        path = draw(st.sampled_from(_paths(doc)))
        if not path and draw(st.integers(0, 9)) == 7:  # rarely: hypothesis favours 0
            doc = draw(json_values)
            continue
        node = doc
        for step in path:
            node = node[step]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        op = draw(st.sampled_from(["delete", "replace", "add"] if keys else ["add"]))
        if op == "add":
            if isinstance(node, dict):
                node[draw(member_names)] = draw(json_values)
            else:
                node.append(draw(json_values))
        elif op == "delete":
            del node[draw(st.sampled_from(keys))]
        else:
            node[draw(st.sampled_from(keys))] = draw(json_values)
    return doc


def _encode(text: str, how: str) -> bytes:
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if how == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    return text.encode("utf-8", "surrogatepass")


documents: st.SearchStrategy[Any] = st.one_of(
    upload_docs(),
    notification_docs(),
    eventbridge_docs(),
    sns_docs(),
    mutated(upload_docs()),
    mutated(notification_docs()),
    mutated(eventbridge_docs()),
    mutated(sns_docs()),
    sns_docs(st.one_of(mutated(notification_docs()), mutated(eventbridge_docs()), json_values)),
    json_values,
)

message_values: st.SearchStrategy[bytes | None] = st.one_of(
    st.builds(
        _encode,
        documents.map(dump),
        st.sampled_from(["utf-8"] * 8 + ["bom", "utf-16"]),
    ),
    st.binary(max_size=64),
    st.none(),
)
"""Any message value: JSON of any shape, valid and mutated events, raw bytes, none."""

_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

header_lists: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["traceparent", "TraceParent", "tracestate"]), st.text()),
            st.one_of(
                st.none(),
                st.binary(max_size=64),
                st.sampled_from(
                    [
                        _TRACE.encode(),
                        _TRACE.upper().encode(),
                        b" " + _TRACE.encode() + b"\n",
                        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01",
                        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "00-\udc80".encode("utf-8", "surrogateescape"),
                        b"\xff" * 55,
                    ]
                ),
                st.text(max_size=60),  # a header value of the wrong type
            ),
        ),
        max_size=4,
    ),
    st.lists(st.one_of(st.tuples(st.text()), st.binary(max_size=8), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=12), st.binary(max_size=60), max_size=2),
)
"""Kafka headers as a client returns them, garbage traceparents, and other shapes and types."""

message_keys: st.SearchStrategy[Any] = st.one_of(st.none(), st.binary(max_size=16))
