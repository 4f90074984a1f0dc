from __future__ import annotations

import json

import pytest

from moderator.events.parse import MAX_DEPTH, MalformedMessage, parse_message
from moderator.events.s3notify import MAX_RECORDS, TenantRule, derive_event_id

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
        # uploads/acme + a.jpg would name the record of uploads + acme/a.jpg
        (native(object={"bucket": "uploads/acme", "key": "a.jpg"}), "object.bucket.*no '/'"),
        (native(object={"bucket": "up\nloads", "key": "a.jpg"}), "object.bucket"),
        (native(uploaded_at="2026-11-29T02:00:00"), "uploaded_at"),
        (native(uploaded_at="9999-12-31T23:00:00-05:00"), "uploaded_at"),
        (native(uploaded_at="0001-01-01T00:00:00+05:00"), "uploaded_at"),
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


@pytest.mark.parametrize(
    "key", ["acme/%FF.jpg", "acme/%C3.jpg", "acme/%ED%A0%80.jpg", "acme/%ff%fe.jpg"]
)
def test_a_key_whose_escapes_are_not_utf8_is_malformed(key: str) -> None:
    """Decoded leniently it would name another object (U+FFFD in place of the bytes)."""
    with pytest.raises(MalformedMessage, match=r"s3\.object\.key: its %-escapes are not UTF-8"):
        parse_message(notification(record(key=key)), RULE)
    parsed = parse_message(notification(record(key="acme/caf%C3%A9+x.jpg")), RULE)
    assert parsed.events[0].object.key == "acme/café x.jpg"


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


# -- inputs that must end in the DLQ, never in an exception ---------------------------------------


def _reason(value: bytes) -> str:
    with pytest.raises(MalformedMessage) as info:
        parse_message(value, RULE)
    reason = str(info.value)
    assert reason.isprintable() and len(reason) <= 300, reason
    reason.encode()  # goes into a Kafka header as UTF-8
    return reason


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 5000,
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        native(context={"x": 1})[:-1] + b', "ignored": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_deep_nesting_is_malformed(value: bytes) -> None:
    assert "nest" in _reason(value)


def test_nesting_within_the_limit_is_fine() -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH - 2):
        deep = [deep]
    (event,) = parse_message(native(ignored=deep), RULE).events
    assert event.tenant_id == "acme"


@pytest.mark.parametrize(
    "value",
    [
        native()[:-1] + b', "ignored": 1' + b"0" * 5000 + b"}",
        native()[:-1] + b', "ignored": -' + b"9" * 5000 + b"}",
        b"1" * 5000,
        native(context={"n": 2**53}),
        native(object={"bucket": "b", "key": "k", "size": 10**30}),
    ],
)
def test_integers_outside_the_i_json_range_are_malformed(value: bytes) -> None:
    assert "integer" in _reason(value)


def test_integer_limit_is_inclusive() -> None:
    (event,) = parse_message(native(context={"n": 2**53 - 1, "m": -(2**53 - 1)}), RULE).events
    assert event.context.model_dump()["n"] == 2**53 - 1


@pytest.mark.parametrize(
    "number", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400 + b".0"]
)
def test_non_finite_numbers_are_malformed(number: bytes) -> None:
    assert "number" in _reason(native()[:-1] + b', "ignored": ' + number + b"}")


def test_lone_surrogate_is_malformed() -> None:
    assert "surrogate" in _reason(native(context={"note": "\ud800"}))
    (event,) = parse_message(native(context={"note": "\U0001f600"}), RULE).events  # a pair
    assert event.context.model_dump()["note"] == "\U0001f600"


def test_duplicate_member_is_malformed() -> None:
    value = b'{"tenant_id": "acme", "tenant_id": "evil", "event_id": "e", "object": {}}'
    assert "twice" in _reason(value)


def test_not_utf8_is_malformed_but_a_bom_is_tolerated() -> None:
    assert "UTF-8" in _reason(native().decode().encode("utf-16"))
    (event,) = parse_message(b"\xef\xbb\xbf" + native(), RULE).events
    assert event.tenant_id == "acme"


def test_reason_is_one_printable_line() -> None:
    reason = _reason(native(attributes={"line\nbreak\x00" + "x" * 2000: 1}))
    assert "attributes" in reason


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"key": "acme/x", "versionId": 5}, "versionId"),
        ({"key": "acme/x", "sequencer": ["a"]}, "sequencer"),
        ({"key": "acme/x", "size": "big"}, "size"),
        ({"key": "acme/x", "eTag": {"a": 1}}, "eTag"),
        ({"key": 7}, "key"),
        ({"key": ["acme/x"]}, "key"),
    ],
)
def test_notification_fields_of_the_wrong_type(obj: dict[str, object], needle: str) -> None:
    rec = record()
    rec["s3"] = {"bucket": {"name": "uploads"}, "object": obj}
    assert needle in _reason(notification(rec))


@pytest.mark.parametrize(
    "s3",
    [
        {"bucket": {"name": 5}, "object": {"key": "acme/x"}},
        {"bucket": {"name": ""}, "object": {"key": "acme/x"}},
        {"bucket": "uploads", "object": {"key": "acme/x"}},
        {"bucket": {"name": "uploads"}, "object": "acme/x"},
        [],
    ],
)
def test_notification_bucket_or_object_unusable(s3: object) -> None:
    rec = record()
    rec["s3"] = s3
    assert "Records[0]" in _reason(notification(rec))


@pytest.mark.parametrize("key", ["acme/%", "acme/%zz", "acme/100%"])
def test_notification_text_that_is_no_percent_escape_stays_as_it_is(key: str) -> None:
    (event,) = parse_message(notification(record(key=key)), RULE).events
    assert event.object.key.startswith("acme/")


def test_notification_tenant_with_trailing_newline_is_rejected() -> None:
    assert "tenant" in _reason(notification(record(key="acme%0A/x.jpg")))


def test_notification_records_are_bounded() -> None:
    many = [record(key=f"acme/{i}.jpg") for i in range(MAX_RECORDS + 1)]
    assert "records" in _reason(notification(*many))
    assert len(parse_message(notification(*many[:MAX_RECORDS]), RULE).events) == MAX_RECORDS


def test_notification_non_string_event_name_is_skipped() -> None:
    rec = record()
    rec["eventName"] = ["ObjectCreated:Put"]
    assert parse_message(notification(rec), RULE).skipped_records == 1


def test_minio_notification_shape() -> None:
    value = json.dumps(
        {
            "EventName": "s3:ObjectCreated:Put",
            "Key": "uploads/acme/a.jpg",
            "Records": [
                {
                    "eventVersion": "2.0",
                    "eventSource": "minio:s3",
                    "eventName": "s3:ObjectCreated:Put",
                    "eventTime": "2026-11-29T02:00:00.000Z",
                    "userIdentity": {"principalId": "minio"},
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                        "object": {
                            "key": "acme%2Fa.jpg",
                            "size": 5,
                            "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                            "contentType": "image/jpeg",
                            "userMetadata": {"content-type": "image/jpeg"},
                            "sequencer": "17A1B2C3D4E5F601",
                        },
                    },
                    "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO"},
                }
            ],
        }
    ).encode()
    (event,) = parse_message(value, RULE).events
    assert (event.tenant_id, event.object.key) == ("acme", "acme/a.jpg")
    assert event.object.etag == "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", "yesterday", "2026-11-29"]
)
def test_notification_event_time_without_a_utc_time_is_unknown(when: str) -> None:
    rec = record()
    rec["eventTime"] = when
    (event,) = parse_message(notification(rec), RULE).events
    assert event.uploaded_at is None


def test_an_integral_float_size_beyond_the_safe_range_is_malformed() -> None:
    """9007199254740992.0 is I-JSON (a float) but as an integer the audit trail's canonical
    JSON could not hold it: the event is dead-lettered, not accepted."""
    doc = {
        "event_id": "e",
        "tenant_id": "acme",
        "object": {"bucket": "b", "key": "acme/k", "size": 9007199254740992.0},
    }
    with pytest.raises(MalformedMessage, match=r"object\.size"):
        parse_message(json.dumps(doc).encode(), RULE)


@pytest.mark.parametrize("size", ['"12"', "true", "12.0"])
def test_a_size_that_is_not_a_json_integer_is_malformed(size: str) -> None:
    """errors.md: a field of the wrong type is malformed_event; a string or a boolean is not
    quietly read as a number."""
    value = '{"event_id": "e", "tenant_id": "acme", "object": {"bucket": "b", "key": "acme/k", '
    with pytest.raises(MalformedMessage, match=r"object\.size: Input should be a valid integer"):
        parse_message(f'{value}"size": {size}}}}}'.encode(), RULE)
