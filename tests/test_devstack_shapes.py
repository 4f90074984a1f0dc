"""`moderator dev-stack upload --shape`: each shape's message value reads, as the service reads
it, as the same upload as the native event; and the checks made before anything is written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moderator.dev.shapes import SHAPES, s3_key, sequencer, shaped_value
from moderator.dev.uploads import send_upload, tenant_rule, upload_event
from moderator.errors import ConfigError
from moderator.events.parse import MalformedMessage, parse_message
from moderator.events.s3notify import TenantRule
from moderator.events.upload import UploadEvent
from moderator.settings import Settings
from tests.policy_fixtures import clear_moderator_env

KEY = "kids/2026/a photo+1 (é).jpg"


def _native(key: str = KEY, version_id: str | None = "v-1") -> UploadEvent:
    return upload_event(
        tenant="kids",
        bucket="uploads",
        key=key,
        size=1234,
        content_type="image/jpeg",
        version_id=version_id,
        surface=None,
    )


def _value(shape: str, native: UploadEvent) -> bytes:
    return shaped_value(shape, native.model_dump(mode="json"), etag="0123abcd", seq=sequencer())


def _rule() -> TenantRule:
    return TenantRule()  # what the ingest loop builds from the default settings.tenancy


def test_the_rule_is_the_services_default(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_moderator_env(monkeypatch)
    assert tenant_rule(Settings()) == _rule()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version_id", ["v-1", None])
def test_every_shape_reads_as_the_same_upload(shape: str, version_id: str | None) -> None:
    native = _native(version_id=version_id)
    parsed = parse_message(_value(shape, native), _rule())
    assert parsed.skipped_records == 0
    (event,) = parsed.events
    assert (event.tenant_id, event.object.bucket, event.object.key) == ("kids", "uploads", KEY)
    assert event.output_key == native.output_key
    assert event.object.version_id == version_id
    assert event.object.size == 1234
    assert event.surface == "default"
    if shape in ("native", "sns-native"):
        assert event == native
    else:
        assert event.event_id.startswith("s3-")
        assert event.object.etag == "0123abcd"
        assert event.uploaded_at is not None


def test_the_store_shapes_of_one_write_share_the_event_id() -> None:
    native = _native()
    seq = sequencer()
    ids = {
        parse_message(
            shaped_value(shape, native.model_dump(mode="json"), etag="e", seq=seq), _rule()
        )
        .events[0]
        .event_id
        for shape in ("s3", "eventbridge", "sns-s3", "sns-eventbridge")
    }
    assert len(ids) == 1


def test_s3_notifications_url_encode_the_key_and_eventbridge_does_not() -> None:
    native = _native()
    s3 = json.loads(_value("s3", native))
    (record,) = s3["Records"]
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["eventSource"] == "aws:s3" and record["eventVersion"] == "2.1"
    assert record["s3"]["object"]["key"] == "kids/2026/a+photo%2B1+%28%C3%A9%29.jpg"
    assert record["s3"]["object"]["key"] == s3_key(KEY)
    assert record["s3"]["object"]["versionId"] == "v-1"
    eventbridge = json.loads(_value("eventbridge", native))
    assert eventbridge["source"] == "aws.s3" and eventbridge["detail-type"] == "Object Created"
    assert eventbridge["detail"]["reason"] == "PutObject"
    assert eventbridge["detail"]["object"]["key"] == KEY
    unversioned = json.loads(_value("s3", _native(version_id=None)))
    assert "versionId" not in unversioned["Records"][0]["s3"]["object"]


@pytest.mark.parametrize(("shape", "inner"), [(s, s[4:]) for s in SHAPES if s.startswith("sns-")])
def test_sns_envelopes_hold_the_other_shape_as_a_string(shape: str, inner: str) -> None:
    native = _native()
    envelope = json.loads(_value(shape, native))
    assert envelope["Type"] == "Notification" and envelope["TopicArn"].startswith("arn:aws:sns:")
    assert isinstance(envelope["Message"], str)
    assert ("Subject" in envelope) == (inner == "s3")
    message: dict[str, Any] = json.loads(envelope["Message"])
    expected = json.loads(_value(inner, native))
    assert message.keys() == expected.keys()


def test_sequencers_grow() -> None:
    first = sequencer()
    assert int(sequencer(), 16) >= int(first, 16)


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'sqs'"):
        shaped_value("sqs", _native().model_dump(mode="json"), etag=None, seq="1")


@pytest.mark.parametrize("key", ["top.jpg", "Acme/x.jpg"])
def test_a_key_without_a_tenant_prefix_is_malformed(key: str) -> None:
    """As docs/architecture.md states: the whole message goes to the DLQ."""
    native = _native()
    good = _value("s3", native)
    doc = json.loads(good)
    bad = json.loads(_value("s3", _native(key="kids/x.jpg")))["Records"][0]
    bad["s3"]["object"]["key"] = s3_key(key)
    doc["Records"].append(bad)
    with pytest.raises(MalformedMessage) as raised:
        parse_message(json.dumps(doc).encode(), _rule())
    assert str(raised.value) == f"S3 notification: no valid tenant id for s3://uploads/{key}"


# -- send_upload's checks, made before anything is written (no servers are running) ----------


def _send(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    clear_moderator_env(monkeypatch)

    def no_s3(*_args: Any) -> Any:
        raise AssertionError("nothing may be written")

    monkeypatch.setattr("moderator.dev.uploads.build_s3_client", no_s3)
    given: dict[str, Any] = {
        "tenant": "kids",
        "bucket": "uploads",
        "key": "kids/a.jpg",
        "content_type": None,
        "surface": None,
        **fields,
    }
    send_upload(Settings(), b"x", **given)


def test_a_surface_is_native_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as raised:
        _send(monkeypatch, shape="s3", surface="profile")
    assert str(raised.value) == (
        "--surface: --shape s3 carries no surface (native and sns-native do); the service "
        "judges its event under the surface 'default'"
    )


def test_sns_native_carries_the_surface() -> None:
    native = upload_event(
        tenant="kids",
        bucket="uploads",
        key="kids/a.jpg",
        size=1,
        content_type=None,
        version_id=None,
        surface="profile",
    )
    (event,) = parse_message(_value("sns-native", native), _rule()).events
    assert event.surface == "profile" and event == native


def test_a_key_the_service_reads_another_tenant_from_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as raised:
        _send(monkeypatch, shape="eventbridge", key="acme/a.jpg")
    assert str(raised.value) == (
        "--shape eventbridge: the service reads the tenant 'acme' from s3://uploads/acme/a.jpg "
        "(tenancy.rule key_prefix), not --tenant 'kids'"
    )


def test_a_key_without_a_tenant_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as raised:
        _send(monkeypatch, shape="sns-s3", key="top.jpg")
    assert str(raised.value) == (
        "--shape sns-s3: the service would send the message to the DLQ as malformed_event: "
        "SNS message: S3 notification: no valid tenant id for s3://uploads/top.jpg"
    )
