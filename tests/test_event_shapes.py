"""The store event shapes on the uploads topic, from real-shape samples, and the rules they share.

tests/fixtures/events/ holds one message per shape, written from the structures the stores
document and send: an AWS S3 bucket notification, MinIO's Kafka message (its `EventName`/`Key`
wrapper around one record, as `go_json` in tests/test_minio_notification.py writes it, and a
replication-proxied tag change with an empty key), an EventBridge "Object Created" event and an
SNS envelope around an S3 notification. Every sample names the same object key, which holds a
space, a `+`, a literal `%2F` and non-ASCII characters: `KEY` below.

The rules: which ObjectCreated events are judged (`tenancy.content_events`), a record without an
object key is skipped, and event ids stay the same for a redelivery but differ for a new write.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moderator.errors import ConfigError
from moderator.events.parse import MalformedMessage, Parsed, parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.upload import UploadEvent
from moderator.settings import ENV_PREFIX, load_settings
from tests.test_minio_notification import minio_message

FIXTURES = Path(__file__).parent / "fixtures" / "events"
KEY = "acme/summer trip/a+b 100%2F été 日本.jpg"
BUCKET = "uploads"
RULE = TenantRule()


@dataclass(frozen=True)
class Sample:
    """What one fixture names: the object, its write and the time of the event."""

    size: int
    etag: str
    version: str | None
    sequencer: str
    uploaded_at: datetime
    content_type: str | None = None


SAMPLES = {
    "aws_s3_notification.json": Sample(
        183742,
        "0d8e2c5a1f4b7e93a6c2d1f0b9e8a7c6",
        "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
        "0067D3F1A52B9C4E81",
        datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC),
    ),
    "minio_kafka_put.json": Sample(
        96311,
        "5f2b9e81c4d07a36e1b8f9c2a4d6e730",
        None,
        "189CAB44117FBFF8",
        datetime(2026, 3, 14, 9, 31, 2, 117000, tzinfo=UTC),
        "image/jpeg",
    ),
    "eventbridge_object_created.json": Sample(
        240117,
        "7b3e0c4f9a2d61e8b5c7f0a3d9e2b4c1-3",
        "Wq0pY5_rN8sVtE3kLm2xJ7bC9dF4gH1a",
        "0067D3F5ECA4B21F03",
        datetime(2026, 3, 14, 9, 40, 12, tzinfo=UTC),
    ),
    "sns_s3_notification.json": Sample(
        51200,
        "c1a5e9f3b7d20486a4e8c2f6b0d9e7a3",
        None,
        "0067D3F7102E8A5B6C",
        datetime(2026, 3, 14, 9, 45, 27, 4000, tzinfo=UTC),
    ),
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_doc(name: str) -> Any:
    return json.loads(fixture(name))


def encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def sha_id(*parts: str) -> str:
    """The event id formula, written out: sha256 of the NUL-joined parts, 40 hex digits."""
    return "s3-" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]


def only_event(parsed: Parsed) -> UploadEvent:
    (event,) = parsed.events
    assert parsed.skipped_records == 0
    return event


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_is_its_objects_upload_event(name: str) -> None:
    sample = SAMPLES[name]
    event = only_event(parse_message(fixture(name), RULE))
    assert (event.object.bucket, event.object.key, event.tenant_id) == (BUCKET, KEY, "acme")
    assert (event.object.size, event.object.etag) == (sample.size, sample.etag)
    assert event.object.version_id == sample.version
    assert event.object.content_type == sample.content_type
    assert event.uploaded_at == sample.uploaded_at
    # A write with a sequencer keeps the id it has always had: bucket, key, version, sequencer.
    assert event.event_id == sha_id(BUCKET, KEY, sample.version or "", sample.sequencer)
    assert only_event(parse_message(fixture(name), RULE)).event_id == event.event_id


def test_the_minio_sample_is_what_minio_writes() -> None:
    message_key, value = minio_message(
        BUCKET,
        KEY,
        size=96311,
        etag="5f2b9e81c4d07a36e1b8f9c2a4d6e730",
        event_time="2026-03-14T09:31:02.117Z",
        sequencer="189CAB44117FBFF8",
    )
    assert value + b"\n" == fixture("minio_kafka_put.json")
    assert message_key == f"{BUCKET}/{KEY}".encode()
    # Go's url.QueryEscape: "/" is %2F, a space "+", "+" %2B, "%" %25, UTF-8 bytes escaped.
    key = fixture_doc("minio_kafka_put.json")["Records"][0]["s3"]["object"]["key"]
    assert key == "acme%2Fsummer+trip%2Fa%2Bb+100%252F+%C3%A9t%C3%A9+%E6%97%A5%E6%9C%AC.jpg"


def test_the_sns_sample_holds_what_raw_delivery_sends() -> None:
    """Raw message delivery sends the envelope's `Message` alone: the S3 shape, same event."""
    raw = fixture_doc("sns_s3_notification.json")["Message"].encode()
    assert json.loads(raw)["Records"][0]["eventSource"] == "aws:s3"
    assert parse_message(raw, RULE) == parse_message(fixture("sns_s3_notification.json"), RULE)


def test_a_replicated_tag_change_without_a_key_is_skipped() -> None:
    """MinIO's replication-proxied PutTagging names no key: skipped, even where PutTagging is
    configured as content, never a DLQ record."""
    value = fixture("minio_kafka_put_tagging_replicated.json")
    (record,) = fixture_doc("minio_kafka_put_tagging_replicated.json")["Records"]
    assert record["s3"]["object"]["key"] == ""
    for events in (frozenset({"Put"}), frozenset({"Put", "PutTagging"})):
        parsed = parse_message(value, TenantRule(content_events=events))
        assert (parsed.events, parsed.skipped_records) == ([], 1)


# -- tenancy.content_events -----------------------------------------------------------------------


def s3_record(name: str, key: object = "acme/x.jpg", **obj: object) -> dict[str, Any]:
    s3_object: dict[str, Any] = {"size": 3, "sequencer": "0A", **obj}
    if key is not ...:
        s3_object["key"] = key
    return {
        "eventName": name,
        "eventTime": "2026-03-14T09:00:00.000Z",
        "s3": {"bucket": {"name": BUCKET}, "object": s3_object},
    }


def notification(*records: dict[str, Any]) -> bytes:
    return encode({"Records": list(records)})


def test_the_content_events_are_configurable() -> None:
    value = notification(
        s3_record("s3:ObjectCreated:Put", "acme/put.jpg"),
        s3_record("ObjectCreated:Copy", "acme/copy.jpg"),
        s3_record("s3:ObjectCreated:PutTagging", "acme/tagged.jpg"),
    )
    default = parse_message(value, RULE)
    assert [e.object.key for e in default.events] == ["acme/put.jpg", "acme/copy.jpg"]
    assert default.skipped_records == 1
    only_put = parse_message(value, TenantRule(content_events=frozenset({"Put"})))
    assert [e.object.key for e in only_put.events] == ["acme/put.jpg"]
    assert only_put.skipped_records == 2


def test_the_content_events_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    default = load_settings().tenancy.content_events
    assert frozenset(default) == frozenset({"Put", "Post", "Copy", "CompleteMultipartUpload"})
    monkeypatch.setenv(f"{ENV_PREFIX}TENANCY__CONTENT_EVENTS", '["Put", "CompleteMultipartUpload"]')
    assert load_settings().tenancy.content_events == ("Put", "CompleteMultipartUpload")
    for bad, needle in (
        ("[]", "at least 1"),
        ('["s3:ObjectCreated:Put"]', "not an event name"),
        ('["Put Object"]', "not an event name"),
    ):
        monkeypatch.setenv(f"{ENV_PREFIX}TENANCY__CONTENT_EVENTS", bad)
        with pytest.raises(ConfigError, match=f"tenancy.content_events: .*{needle}"):
            load_settings()


# -- records without an object key ----------------------------------------------------------------


def test_a_record_without_a_key_is_skipped_and_one_of_the_wrong_type_is_malformed() -> None:
    """No key (missing, null or empty) names no object: that record is skipped and counted, and
    the message's other records are judged. A key that is not a string is a broken producer:
    the message is dead-lettered."""
    missing: tuple[object, ...] = ("", None, ...)
    for key in missing:
        value = notification(s3_record("ObjectCreated:Put", key), s3_record("ObjectCreated:Put"))
        parsed = parse_message(value, RULE)
        assert [e.object.key for e in parsed.events] == ["acme/x.jpg"], key
        assert parsed.skipped_records == 1
    wrong: tuple[object, ...] = (7, ["acme/x.jpg"], {"k": 1})
    for key in wrong:
        value = notification(s3_record("ObjectCreated:Put", key), s3_record("ObjectCreated:Put"))
        with pytest.raises(MalformedMessage, match=r"Records\[0\]\.s3\.object\.key is not a"):
            parse_message(value, RULE)


# -- event ids: the same for a redelivery, another for a new write --------------------------------


def _s3_write(doc: dict[str, Any], etag: str, sequencer: str | None, time: str) -> None:
    (record,) = doc["Records"]
    obj = record["s3"]["object"]
    obj["eTag"] = etag
    if sequencer is None:
        obj.pop("sequencer", None)
    else:
        obj["sequencer"] = sequencer
    record["eventTime"] = time


def _eventbridge_write(doc: dict[str, Any], etag: str, sequencer: str | None, time: str) -> None:
    doc["detail"]["object"].update({"etag": etag, "sequencer": sequencer})
    doc["time"] = time


def _sns_write(doc: dict[str, Any], etag: str, sequencer: str | None, time: str) -> None:
    inner = json.loads(doc["Message"])
    _s3_write(inner, etag, sequencer, time)
    doc["Message"] = json.dumps(inner)


def _no_sequencer_store(doc: dict[str, Any], etag: str, sequencer: str | None, time: str) -> None:
    """An S3-compatible store that sends neither a sequencer nor a version id."""
    _s3_write(doc, etag, None, time)
    doc["Records"][0]["s3"]["object"].pop("versionId", None)


# (fixture, how a write changes it): each shape as its store sends a second write.
WRITERS = {
    "aws": ("aws_s3_notification.json", _s3_write),
    "minio": ("minio_kafka_put.json", _s3_write),
    "eventbridge": ("eventbridge_object_created.json", _eventbridge_write),
    "sns": ("sns_s3_notification.json", _sns_write),
    "no-sequencer-nor-version": ("aws_s3_notification.json", _no_sequencer_store),
}


@pytest.mark.parametrize("shape", sorted(WRITERS))
def test_event_ids_per_store_shape(shape: str) -> None:
    name, write = WRITERS[shape]

    def event_id(etag: str, sequencer: str, time: str) -> str:
        doc = fixture_doc(name)
        write(doc, etag, sequencer, time)
        value = encode(doc)
        first = only_event(parse_message(value, RULE)).event_id
        # A redelivery is the same message again: the same id.
        assert only_event(parse_message(value, RULE)).event_id == first
        return first

    a, b = "1" * 32, "2" * 32
    one = event_id(a, "0067D3F1A52B9C4E90", "2026-03-14T10:00:00Z")
    two = event_id(b, "0067D3F1A52B9C4E91", "2026-03-14T10:05:00Z")  # other content, later
    three = event_id(b, "0067D3F1A52B9C4E92", "2026-03-14T10:09:00Z")  # the same content again
    assert len({one, two, three}) == 3


def test_without_sequencer_and_version_the_etag_and_time_make_the_id() -> None:
    doc = fixture_doc("aws_s3_notification.json")
    _no_sequencer_store(doc, "33333333333333333333333333333333", None, "2026-03-14T10:00:00.250Z")
    event = only_event(parse_message(encode(doc), RULE))
    assert event.event_id == sha_id(
        BUCKET, KEY, "", "", "33333333333333333333333333333333", "2026-03-14T10:00:00.250Z"
    )
