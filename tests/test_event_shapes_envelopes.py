"""EventBridge events and SNS envelopes on the uploads topic: judged, skipped or dead-lettered.

The samples are the ones of tests/fixtures/events/ (see tests/test_event_shapes.py), changed one
member at a time; the last test runs them through the consume loop on the in-memory broker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from moderator.events.parse import MAX_DEPTH, MalformedMessage, parse_message
from moderator.events.s3notify import MAX_RECORDS, TenantRule
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from tests.harness import Instance, png, wait_for
from tests.test_deploy_compose import COMPOSE_DIR, consumer_service, settings_of
from tests.test_event_shapes import BUCKET, KEY, SAMPLES, encode, fixture, fixture_doc

RULE = TenantRule()


def eventbridge(**detail: Any) -> dict[str, Any]:
    doc: dict[str, Any] = fixture_doc("eventbridge_object_created.json")
    doc["detail"].update(detail)
    return doc


def sns(message: Any) -> bytes:
    """The SNS sample with `message` (a document, or text as it is) as its Message."""
    doc = fixture_doc("sns_s3_notification.json")
    doc["Message"] = message if isinstance(message, str) else json.dumps(message)
    return encode(doc)


def reason_of(value: bytes) -> str:
    with pytest.raises(MalformedMessage) as info:
        parse_message(value, RULE)
    text = str(info.value)
    assert text.isprintable() and len(text) <= 300
    return text


# -- EventBridge ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "judged"),
    [
        ("PutObject", True),
        ("POST Object", True),
        ("CopyObject", True),
        ("CompleteMultipartUpload", True),
        ("PutObjectTagging", False),
        (None, False),
        (7, False),
    ],
)
def test_an_object_created_reason_is_judged_when_it_writes_content(
    reason: object, judged: bool
) -> None:
    parsed = parse_message(encode(eventbridge(reason=reason)), RULE)
    assert (len(parsed.events), parsed.skipped_records) == ((1, 0) if judged else (0, 1))


def test_eventbridge_reasons_follow_the_content_events() -> None:
    rule = TenantRule(content_events=frozenset({"Put"}))
    assert len(parse_message(encode(eventbridge(reason="PutObject")), rule).events) == 1
    copied = parse_message(encode(eventbridge(reason="CopyObject")), rule)
    assert (copied.events, copied.skipped_records) == ([], 1)


@pytest.mark.parametrize(
    "detail_type", ["Object Deleted", "Object Tags Added", "Object Restore Completed", 5]
)
def test_other_s3_detail_types_are_skipped(detail_type: object) -> None:
    doc = eventbridge()
    doc["detail-type"] = detail_type
    parsed = parse_message(encode(doc), RULE)
    assert (parsed.events, parsed.skipped_records) == ([], 1)


def test_the_eventbridge_key_is_taken_as_sent() -> None:
    """EventBridge does not URL-encode keys: `+` and `%2F` are part of the name."""
    (event,) = parse_message(encode(eventbridge(object={"key": "acme/a+b%2Fc.jpg"})), RULE).events
    assert event.object.key == "acme/a+b%2Fc.jpg"
    assert event.uploaded_at == SAMPLES["eventbridge_object_created.json"].uploaded_at


@pytest.mark.parametrize("key", ["", None])
def test_an_eventbridge_event_without_a_key_is_skipped(key: object) -> None:
    parsed = parse_message(encode(eventbridge(object={"key": key, "size": 1})), RULE)
    assert (parsed.events, parsed.skipped_records) == ([], 1)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"source": "aws.ec2"}, "EventBridge event: source is 'aws.ec2', not 'aws.s3'"),
        ({"detail": "x"}, "EventBridge event: event.detail is not an object"),
        ({"detail": None}, "EventBridge event: event.detail is missing"),
    ],
)
def test_unusable_eventbridge_events_are_malformed(change: dict[str, Any], needle: str) -> None:
    doc = eventbridge()
    doc.update(change)
    assert reason_of(encode(doc)) == needle


@pytest.mark.parametrize(
    ("detail", "needle"),
    [
        ({"bucket": {}}, "detail.bucket.name is missing"),
        ({"object": {"key": 5}}, "detail.object.key is not a string"),
        ({"object": {"key": "acme/x", "size": -1}}, "detail.object.size"),
        ({"object": {"key": "acme/x", "version-id": 3}}, "detail.object.version-id is not"),
        ({"object": {"key": "nokey.jpg"}}, "no valid tenant id for s3://uploads/nokey.jpg"),
    ],
)
def test_unusable_eventbridge_details_are_malformed(detail: dict[str, Any], needle: str) -> None:
    assert needle in reason_of(encode(eventbridge(**detail)))


# -- SNS ------------------------------------------------------------------------------------------


def test_an_sns_wrapped_eventbridge_event_is_judged() -> None:
    (event,) = parse_message(sns(eventbridge()), RULE).events
    assert (event.object.bucket, event.object.key) == (BUCKET, KEY)


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_subscription_handshakes_are_skipped(kind: str) -> None:
    doc = fixture_doc("sns_s3_notification.json")
    doc.update(Type=kind, Message="You have chosen to subscribe to the topic.")
    parsed = parse_message(encode(doc), RULE)
    assert (parsed.events, parsed.skipped_records) == ([], 1)


def test_an_s3_test_event_through_sns_is_skipped() -> None:
    parsed = parse_message(sns({"Service": "Amazon S3", "Event": "s3:TestEvent"}), RULE)
    assert (parsed.events, parsed.skipped_records) == ([], 1)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"Type": "Bogus"}, "SNS message: Type is 'Bogus', not 'Notification'"),
        ({"Type": ["Notification"]}, "SNS message: Type is"),
        ({"Message": {"Records": []}}, "SNS message: Message is missing or not a string"),
        ({"Message": None}, "SNS message: Message is missing or not a string"),
    ],
)
def test_unusable_sns_envelopes_are_malformed(change: dict[str, Any], needle: str) -> None:
    doc = fixture_doc("sns_s3_notification.json")
    doc.update(change)
    assert reason_of(encode(doc)).startswith(needle)


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ("not json", "SNS message: not JSON"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "SNS message: not JSON: nested 33 deep"),
        ('{"Records": [], "Records": []}', "SNS message: not I-JSON: member 'Records' appears"),
        ('{"Records": ["\\ud800"]}', "SNS message: not I-JSON: a string holds a lone surrogate"),
        ('{"n": 9007199254740993}', "SNS message: not I-JSON: integer"),
        ("NaN", "SNS message: not JSON: NaN"),
        ('{"Records": 5}', "SNS message: S3 notification: Records is not a list"),
        ('{"Records": []}', "SNS message: S3 notification: Records is empty"),
        ('{"event_id": "e"}', "SNS message: UploadEvent"),
    ],
)
def test_the_sns_message_is_held_to_the_same_limits(message: str, needle: str) -> None:
    assert reason_of(sns(message)).startswith(needle)


def test_sns_message_records_are_bounded() -> None:
    record = json.loads(fixture_doc("sns_s3_notification.json")["Message"])["Records"][0]
    assert "records (limit" in reason_of(sns({"Records": [record] * (MAX_RECORDS + 1)}))


def test_an_sns_envelope_inside_an_sns_envelope_is_malformed() -> None:
    inner = fixture("sns_s3_notification.json").decode()
    assert reason_of(sns(inner)) == "SNS message: SNS message: its Message is another SNS envelope"


def test_an_sns_envelope_without_topic_arn_is_named_as_one() -> None:
    """Not as an UploadEvent missing its event_id: that is not what the producer sent."""
    doc = fixture_doc("sns_s3_notification.json")
    del doc["TopicArn"]
    expected = "an SNS envelope (Type, Message) without TopicArn"
    assert reason_of(encode(doc)) == expected
    assert reason_of(sns(json.dumps(doc))) == f"SNS message: {expected}"


# -- through the consume loop ---------------------------------------------------------------------


def test_eventbridge_and_sns_messages_through_the_consumer_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The compose consumer (fake engine, in-memory broker and store): each sample becomes one
    verdict for the tenant's object, none is dead-lettered."""
    broker, store = MemoryBroker(default_partitions=3), InMemoryObjectStore()
    store.put(BUCKET, KEY, png(11, size=32))
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
    names = sorted(SAMPLES)
    for name in names:
        broker.produce_plain(settings.kafka.topics.uploads, fixture(name), key=name.encode())
    verdicts = settings.kafka.topics.verdicts
    inst = Instance(broker, store, settings).start()
    try:
        wait_for(lambda: len(broker.records(verdicts)) == len(names), 30, "a verdict per sample")
    finally:
        inst.shutdown()
    assert inst.error is None
    assert broker.records(settings.kafka.topics.dlq) == []
    found = [json.loads(r.value or b"{}") for r in broker.records(verdicts)]
    assert {(v["tenant_id"], v["object"]["key"], v["error"]) for v in found} == {
        ("acme", KEY, None)
    }
    assert len({v["event_id"] for v in found}) == len(names)


def test_the_consumer_loop_judges_only_the_configured_content_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tenancy.content_events reaches the loop's rule: with only Put configured, an EventBridge
    CopyObject is skipped while a PutObject is judged."""
    broker, store = MemoryBroker(default_partitions=1), InMemoryObjectStore()
    store.put(BUCKET, KEY, png(12, size=32))
    settings = settings_of(
        consumer_service(),
        monkeypatch,
        **{
            "engine.kind": "fake",
            "engine.max_wait_ms": 2,
            "kafka.commit_interval_ms": 20,
            "policies.dir": COMPOSE_DIR / "policies",
            "http.port": 0,
            "tenancy.content_events": ["Put"],
        },
    )
    uploads, verdicts = settings.kafka.topics.uploads, settings.kafka.topics.verdicts
    broker.produce_plain(uploads, encode(eventbridge(reason="CopyObject")), key=b"copy")
    broker.produce_plain(uploads, encode(eventbridge(reason="PutObject")), key=b"put")
    inst = Instance(broker, store, settings).start()
    try:
        wait_for(lambda: len(broker.records(verdicts)) == 1, 30, "the Put's verdict")
        wait_for(lambda: inst.loop.stats.skipped_records >= 1, 30, "the Copy skipped")
    finally:
        inst.shutdown()
    assert inst.error is None
    assert len(broker.records(verdicts)) == 1
