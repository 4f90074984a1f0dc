from __future__ import annotations

import json

import pytest

from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule, derive_event_id

RULE = TenantRule()


def native(**over: object) -> bytes:
    doc: dict[str, object] = {
        "event_id": "01J-abc.def:1",
        "tenant_id": "acme",
        "object": {"bucket": "uploads", "key": "acme/2026/a.jpg", "size": 10},
        "uploaded_at": "2026-11-29T02:00:00Z",
        "context": {"surface": "profile_photo", "user_id": "u-1"},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def notification(*records: dict[str, object]) -> bytes:
    return json.dumps({"Records": list(records)}).encode()


def record(
    name: str = "s3:ObjectCreated:Put",
    key: str = "acme/a+b%2Fc.jpg",
    bucket: str = "uploads",
    **obj: object,
) -> dict[str, object]:
    return {
        "eventName": name,
        "eventTime": "2026-11-29T02:00:00.000Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5, **obj}},
    }


def test_native_event() -> None:
    (event,) = parse_message(native(), RULE).events
    assert event.tenant_id == "acme"
    assert event.surface == "profile_photo"
    assert event.output_key == "acme:uploads/acme/2026/a.jpg"
    assert event.uploaded_at is not None and event.uploaded_at.tzinfo is not None


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "no value"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "UploadEvent"),
        (native(event_id="has space"), "event_id"),
        (native(event_id="x" * 129), "event_id"),
        (native(tenant_id="Acme"), "tenant_id"),
        (native(object={"bucket": "b"}), "object.key"),
        (native(uploaded_at="2026-11-29T02:00:00"), "uploaded_at"),
        (native(attributes={"a": 1}), "attributes"),
    ],
)
def test_malformed_native(value: bytes | None, needle: str) -> None:
    with pytest.raises(MalformedMessage, match=needle):
        parse_message(value, RULE)


def test_notification_several_records_and_url_decoding() -> None:
    parsed = parse_message(
        notification(record(), record("s3:ObjectRemoved:Delete"), record(key="acme/x%20y.png")),
        RULE,
    )
    assert [e.object.key for e in parsed.events] == ["acme/a b/c.jpg", "acme/x y.png"]
    assert parsed.skipped_records == 1
    assert all(e.tenant_id == "acme" for e in parsed.events)


def test_notification_event_id_is_deterministic() -> None:
    a = parse_message(notification(record(sequencer="0055")), RULE).events[0]
    b = parse_message(notification(record(sequencer="0055")), RULE).events[0]
    c = parse_message(notification(record(sequencer="0056")), RULE).events[0]
    assert a.event_id == b.event_id != c.event_id
    assert a.event_id == derive_event_id("uploads", "acme/a b/c.jpg", None, "0055")


def test_notification_version_id_kept() -> None:
    (event,) = parse_message(notification(record(versionId="v1")), RULE).events
    assert event.object.version_id == "v1"


def test_test_event_is_skipped_not_dead_lettered() -> None:
    parsed = parse_message(json.dumps({"Event": "s3:TestEvent"}).encode(), RULE)
    assert parsed.events == [] and parsed.skipped_records == 1


def test_bucket_map_rule() -> None:
    rule = TenantRule("bucket_map", {"acme-uploads": "acme"})
    (event,) = parse_message(notification(record(bucket="acme-uploads", key="x.jpg")), rule).events
    assert event.tenant_id == "acme"
    with pytest.raises(MalformedMessage, match="bucket"):
        parse_message(notification(record(bucket="other", key="x.jpg")), rule)


@pytest.mark.parametrize("key", ["noprefix.jpg", "BAD/x.jpg", "%2Fabs.jpg"])
def test_key_prefix_without_valid_tenant(key: str) -> None:
    with pytest.raises(MalformedMessage, match="tenant"):
        parse_message(notification(record(key=key)), RULE)


def test_record_missing_fields() -> None:
    with pytest.raises(MalformedMessage, match=r"Records\[0\]"):
        parse_message(notification({"eventName": "ObjectCreated:Put", "s3": {}}), RULE)
