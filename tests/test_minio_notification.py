"""What MinIO publishes on Kafka for an upload, in the compose stack's configuration, and what the
consumer makes of it.

MinIO's Kafka notification target sends one message per event record: the message key is
`<bucket>/<object key>` (the key URL-decoded), the value is `{"EventName", "Key", "Records":
[record]}` written by Go's encoding/json (compact, struct fields in declaration order, map keys
sorted, `<`, `>` and `&` escaped). The record is MinIO's S3 event format: eventVersion 2.0,
eventSource minio:s3, the object key URL-encoded with Go's url.QueryEscape (`/` as %2F, a space
as `+`), the sequencer the object's modification time in nanoseconds as upper-case hex.

MINIO_KEY / MINIO_VALUE below are such a message, byte for byte, for `mc cp cat 1.jpg
local/uploads/acme/photos/` against the stack in deploy/compose (bucket `uploads`, region
us-east-1, root user minioadmin). The tests parse it with the consumer's settings as the compose
file sets them, and run it through the real consume loop on the in-memory broker.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule, derive_event_id
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.policy.check import check
from moderator.settings import Settings
from tests.harness import Instance, png, wait_for
from tests.test_deploy_compose import COMPOSE_DIR, consumer_service, settings_of, uploads_bucket

TENANT = "acme"
OBJECT_KEY = "acme/photos/cat 1.jpg"
ETAG = "9b2cf535f27731c974343645a3985328"

MINIO_KEY = b"uploads/acme/photos/cat 1.jpg"
MINIO_VALUE = (
    b'{"EventName":"s3:ObjectCreated:Put","Key":"uploads/acme/photos/cat 1.jpg","Records":[{'
    b'"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"us-east-1",'
    b'"eventTime":"2026-12-06T02:41:07.512Z","eventName":"s3:ObjectCreated:Put",'
    b'"userIdentity":{"principalId":"minioadmin"},'
    b'"requestParameters":{"principalId":"minioadmin","region":"us-east-1",'
    b'"sourceIPAddress":"172.18.0.1"},'
    b'"responseElements":{"x-amz-id-2":'
    b'"dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",'
    b'"x-amz-request-id":"18EE89D93E2F0A77",'
    b'"x-minio-deployment-id":"4c5b8a0e-7f3d-4a8e-9c61-2b7d1e0f9a34",'
    b'"x-minio-origin-endpoint":"http://172.18.0.4:9000"},'
    b'"s3":{"s3SchemaVersion":"1.0","configurationId":"Config",'
    b'"bucket":{"name":"uploads","ownerIdentity":{"principalId":"minioadmin"},'
    b'"arn":"arn:aws:s3:::uploads"},'
    b'"object":{"key":"acme%2Fphotos%2Fcat+1.jpg","size":48213,'
    b'"eTag":"9b2cf535f27731c974343645a3985328","contentType":"image/jpeg",'
    b'"userMetadata":{"content-type":"image/jpeg"},"sequencer":"18EE89D93E1441E0"}},'
    b'"source":{"host":"172.18.0.1","port":"",'
    b'"userAgent":"MinIO (linux; amd64) minio-go/v7.0.95 mc/RELEASE.2025-08-13T08-35-41Z"}}]}'
)

# Field order of MinIO's event structs (internal/event/event.go), as encoding/json writes them.
RECORD_FIELDS = [
    "eventVersion",
    "eventSource",
    "awsRegion",
    "eventTime",
    "eventName",
    "userIdentity",
    "requestParameters",
    "responseElements",
    "s3",
    "source",
]
OBJECT_FIELDS = ["key", "size", "eTag", "contentType", "userMetadata", "versionId", "sequencer"]


def go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def minio_message(
    bucket: str,
    key: str,
    *,
    size: int,
    etag: str,
    content_type: str = "image/jpeg",
    event_name: str = "s3:ObjectCreated:Put",
    event_time: str = "2026-12-06T02:41:07.512Z",
    sequencer: str = "18EE89D93E1441E0",
    version_id: str = "",
) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka message MinIO sends for one object event."""
    principal = {"principalId": "minioadmin"}
    obj: dict[str, Any] = {
        "key": quote_plus(key, safe=""),  # Go's url.QueryEscape
        "size": size,
        "eTag": etag,
        "contentType": content_type,
        "userMetadata": {"content-type": content_type},
    }
    if version_id:
        obj["versionId"] = version_id
    obj["sequencer"] = sequencer
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "us-east-1",
        "eventTime": event_time,
        "eventName": event_name,
        "userIdentity": principal,
        "requestParameters": {
            "principalId": "minioadmin",
            "region": "us-east-1",
            "sourceIPAddress": "172.18.0.1",
        },
        "responseElements": {
            "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
            "x-amz-request-id": "18EE89D93E2F0A77",
            "x-minio-deployment-id": "4c5b8a0e-7f3d-4a8e-9c61-2b7d1e0f9a34",
            "x-minio-origin-endpoint": "http://172.18.0.4:9000",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": principal, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
        "source": {
            "host": "172.18.0.1",
            "port": "",
            "userAgent": "MinIO (linux; amd64) minio-go/v7.0.95 mc/RELEASE.2025-08-13T08-35-41Z",
        },
    }
    message_key = f"{bucket}/{key}"
    value = {"EventName": event_name, "Key": message_key, "Records": [record]}
    return message_key.encode(), go_json(value)


@pytest.fixture
def consumer_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The consumer's settings from deploy/compose/compose.yaml."""
    return settings_of(consumer_service(), monkeypatch)


def rule_of(settings: Settings) -> TenantRule:
    """The tenant rule the consume loop builds from the settings."""
    return TenantRule(
        settings.tenancy.rule,
        dict(settings.tenancy.bucket_map),
        frozenset(settings.tenancy.content_events),
    )


def test_the_builder_writes_what_minio_writes() -> None:
    assert minio_message(uploads_bucket(), OBJECT_KEY, size=48213, etag=ETAG) == (
        MINIO_KEY,
        MINIO_VALUE,
    )


def test_the_message_has_minios_shape() -> None:
    document = json.loads(MINIO_VALUE)
    assert list(document) == ["EventName", "Key", "Records"]
    (record,) = document["Records"]
    assert list(record) == RECORD_FIELDS
    assert (record["eventVersion"], record["eventSource"]) == ("2.0", "minio:s3")
    assert record["eventName"] == document["EventName"] == "s3:ObjectCreated:Put"
    s3 = record["s3"]
    assert list(s3) == ["s3SchemaVersion", "configurationId", "bucket", "object"]
    assert list(s3["bucket"]) == ["name", "ownerIdentity", "arn"]
    assert list(s3["object"]) == [f for f in OBJECT_FIELDS if f in s3["object"]]
    assert list(record["source"]) == ["host", "port", "userAgent"]
    for mapping in ("requestParameters", "responseElements"):
        assert list(record[mapping]) == sorted(record[mapping]), mapping
    assert "x-amz-request-id" in record["responseElements"]
    # The message key and the value's Key: bucket, "/", the object key decoded.
    assert document["Key"].encode() == MINIO_KEY
    assert f"{s3['bucket']['name']}/{OBJECT_KEY}".encode() == MINIO_KEY


def test_the_bucket_and_tenant_are_the_compose_stacks(consumer_settings: Settings) -> None:
    """The message is for the bucket minio-setup subscribes, under a tenant the stack's policies
    define: what the consumer receives after an `mc cp` as docs/compose.md describes it."""
    assert uploads_bucket() == "uploads"
    assert json.loads(MINIO_VALUE)["Records"][0]["s3"]["bucket"]["name"] == uploads_bucket()
    result = check(COMPOSE_DIR / "policies", consumer_settings.tenancy)
    assert result.errors == ()
    assert result.policies[(TENANT, "default")].allows_object(uploads_bucket(), OBJECT_KEY)


def test_a_minio_put_is_the_tenants_upload_event(consumer_settings: Settings) -> None:
    parsed = parse_message(MINIO_VALUE, rule_of(consumer_settings))
    assert parsed.skipped_records == 0
    (event,) = parsed.events
    assert event.tenant_id == TENANT
    assert event.object.bucket == uploads_bucket()
    assert event.object.key == OBJECT_KEY  # URL-decoded: %2F and + are gone
    assert event.object.size == 48213
    assert event.object.etag == ETAG
    assert event.object.content_type == "image/jpeg"
    assert event.object.version_id is None
    assert event.uploaded_at == datetime(2026, 12, 6, 2, 41, 7, 512000, tzinfo=UTC)
    # Deterministic: a redelivered notification is the same event.
    assert event.event_id == derive_event_id(uploads_bucket(), OBJECT_KEY, None, "18EE89D93E1441E0")
    assert parse_message(MINIO_VALUE, rule_of(consumer_settings)).events == [event]


@pytest.mark.parametrize(
    "key",
    [
        "kids/été/a+b c.png",
        "acme/100%2Fliteral percent.jpg",
        "acme/a&b<c>.jpg",
        "kids/日本/写真 1.webp",
        "acme/deep/er/still/acme.gif",
    ],
)
def test_keys_round_trip_through_minios_encoding(consumer_settings: Settings, key: str) -> None:
    message_key, value = minio_message(uploads_bucket(), key, size=7, etag=ETAG)
    assert message_key == f"{uploads_bucket()}/{key}".encode()
    (event,) = parse_message(value, rule_of(consumer_settings)).events
    assert (event.tenant_id, event.object.key) == (key.split("/", 1)[0], key)


def test_a_server_side_copy_is_judged(consumer_settings: Settings) -> None:
    name = "s3:ObjectCreated:Copy"
    _, value = minio_message(uploads_bucket(), OBJECT_KEY, size=1, etag=ETAG, event_name=name)
    parsed = parse_message(value, rule_of(consumer_settings))
    assert len(parsed.events) == 1 and parsed.skipped_records == 0


def test_a_versioned_bucket_and_a_multipart_upload(consumer_settings: Settings) -> None:
    """`mc cp` of a large file ends in CompleteMultipartUpload (an ETag with a part count); in a
    versioned bucket the record names the version, and the event id depends on it."""
    _, value = minio_message(
        uploads_bucket(),
        OBJECT_KEY,
        size=96 * 1024 * 1024,
        etag="c2f1e4a7b9d03f6a8e5b1c7d9f2a4e60-6",
        event_name="s3:ObjectCreated:CompleteMultipartUpload",
        version_id="0b6f5e2a-3c4d-4e8f-9a1b-2c3d4e5f6a7b",
    )
    (event,) = parse_message(value, rule_of(consumer_settings)).events
    assert event.object.etag == "c2f1e4a7b9d03f6a8e5b1c7d9f2a4e60-6"
    assert event.object.version_id == "0b6f5e2a-3c4d-4e8f-9a1b-2c3d4e5f6a7b"
    assert (
        event.event_id != parse_message(MINIO_VALUE, rule_of(consumer_settings)).events[0].event_id
    )


def test_removals_reads_and_metadata_changes_are_skipped(consumer_settings: Settings) -> None:
    # `--event put` also sends tag, retention and legal-hold changes as ObjectCreated: the
    # content is unchanged, so none of them is judged again.
    for name in (
        "s3:ObjectRemoved:Delete",
        "s3:ObjectAccessed:Get",
        "s3:ObjectCreated:PutTagging",
        "s3:ObjectCreated:DeleteTagging",
        "s3:ObjectCreated:PutRetention",
        "s3:ObjectCreated:PutLegalHold",
    ):
        _, value = minio_message(uploads_bucket(), OBJECT_KEY, size=1, etag=ETAG, event_name=name)
        parsed = parse_message(value, rule_of(consumer_settings))
        assert (parsed.events, parsed.skipped_records) == ([], 1), name


def test_an_object_outside_any_tenant_prefix_is_malformed(consumer_settings: Settings) -> None:
    _, value = minio_message(uploads_bucket(), "cat.jpg", size=1, etag=ETAG)
    with pytest.raises(MalformedMessage, match=r"no valid tenant id for s3://uploads/cat\.jpg"):
        parse_message(value, rule_of(consumer_settings))


def test_minio_messages_through_the_consumer_loop(
    monkeypatch: pytest.MonkeyPatch, consumer_settings: Settings
) -> None:
    """The compose consumer's settings (fake engine instead of nudenet, the in-memory broker
    and object store instead of Kafka and MinIO): an upload becomes one verdict for its tenant,
    keyed by tenant and object, with MinIO's message key nowhere in the way; a notification
    the consumer cannot use is dead-lettered with MinIO's message key kept."""
    broker, store = MemoryBroker(default_partitions=3), InMemoryObjectStore()
    image = png(7, size=32)
    key = "acme/photos/cat 1.png"
    store.put(uploads_bucket(), key, image)
    etag = hashlib.md5(image, usedforsecurity=False).hexdigest()
    upload_key, upload = minio_message(
        uploads_bucket(), key, size=len(image), etag=etag, content_type="image/png"
    )
    stray_key, stray = minio_message(uploads_bucket(), "cat.jpg", size=1, etag=etag)
    topic = consumer_settings.kafka.topics.uploads
    broker.produce_plain(topic, upload, key=upload_key)
    broker.produce_plain(topic, stray, key=stray_key)

    settings = settings_of(
        consumer_service(),
        monkeypatch,
        **{
            "engine.kind": "fake",
            "engine.fake.unsafe_rate": 0.0,
            "engine.max_wait_ms": 2,
            "kafka.commit_interval_ms": 20,
            "policies.dir": COMPOSE_DIR / "policies",
            "http.port": 0,
        },
    )
    assert settings.kafka.delivery == "exactly_once"
    verdicts_topic, dlq_topic = settings.kafka.topics.verdicts, settings.kafka.topics.dlq
    inst = Instance(broker, store, settings).start()
    try:
        wait_for(
            lambda: bool(broker.records(verdicts_topic)) and bool(broker.records(dlq_topic)),
            30,
            "a verdict and a DLQ record",
        )
    finally:
        inst.shutdown()
    assert inst.error is None

    (record,) = broker.records(verdicts_topic)
    verdict = json.loads(record.value or b"{}")
    assert verdict["tenant_id"] == TENANT
    assert (verdict["object"]["bucket"], verdict["object"]["key"]) == (uploads_bucket(), key)
    assert verdict["object"]["etag"] == etag
    assert verdict["error"] is None
    assert verdict["decision"] == "allow"
    assert record.key == f"{TENANT}:".encode() + upload_key
    (audit,) = broker.records(settings.kafka.topics.audit)
    assert json.loads(audit.value or b"{}")["verdict"]["event_id"] == verdict["event_id"]

    (dead,) = broker.records(dlq_topic)
    assert (dead.key, dead.value) == (stray_key, stray)
    headers = dict(dead.headers or [])
    assert headers["moderator.error.code"] == b"malformed_event"
    assert b"no valid tenant id" in headers["moderator.error.message"]


def test_the_policies_directory_is_the_one_the_consumer_mounts(
    consumer_settings: Settings,
) -> None:
    mounts = [v for v in consumer_service()["volumes"] if v.startswith("./policies:")]
    assert mounts == [f"./policies:{consumer_settings.policies.dir}:ro"]
    assert Path(COMPOSE_DIR / "policies" / f"{TENANT}.yaml").is_file()
