"""Generated inputs for `parse_message`: every value ends as events or as one DLQ reason."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any
from urllib.parse import unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.chain import jcs
from moderator.emit.records import trace_from_headers
from moderator.events.parse import MAX_REASON_CHARS, MalformedMessage, Parsed, parse_message
from moderator.events.s3notify import TenantRule, derive_event_id
from moderator.events.upload import UploadEvent
from tests.fuzz import fuzz_settings
from tests.messages import (
    BUCKET,
    EVENTBRIDGE_REASONS,
    TENANTS,
    dump,
    eventbridge_docs,
    header_lists,
    json_values,
    message_values,
    mutated,
    notification_docs,
    sns_docs,
    upload_docs,
)

pytestmark = pytest.mark.fuzz

RULES = st.sampled_from([TenantRule(), TenantRule("bucket_map", {BUCKET: "acme"})])


def outcome(value: bytes | None, rule: TenantRule) -> Parsed | None:
    """Parse `value`; None for a DLQ reason. Any other exception fails the test."""
    try:
        parsed = parse_message(value, rule)
    except MalformedMessage as exc:
        reason = str(exc)
        assert reason and reason.isprintable() and len(reason) <= MAX_REASON_CHARS, reason
        reason.encode("utf-8")  # a Kafka header
        return None
    for event in parsed.events:
        # what the verdict and the audit trail will write must be writable
        event.output_key.encode("utf-8")
        jcs.dumps(event.model_dump(mode="json"))
        assert UploadEvent.model_validate_json(event.model_dump_json()) == event
        if event.uploaded_at is not None:
            event.uploaded_at.astimezone(UTC)  # reports convert it
    assert parsed.skipped_records >= 0
    return parsed


@fuzz_settings(300)
@given(st.binary(max_size=256), RULES)
def test_random_bytes(value: bytes, rule: TenantRule) -> None:
    """Arbitrary bytes (default 300 inputs, well under a second)."""
    outcome(value, rule)


@fuzz_settings(300)
@given(message_values, RULES)
def test_any_message(value: bytes | None, rule: TenantRule) -> None:
    """Random JSON and valid, mutated and hostile events (default 300 inputs, about 2 s)."""
    outcome(value, rule)


@fuzz_settings(200)
@given(json_values)
def test_random_json_values(doc: Any) -> None:
    """Random JSON values of any shape with hostile parts (default 200 inputs, about 1 s)."""
    outcome(dump(doc).encode(), TenantRule())


@fuzz_settings(200)
@given(mutated(upload_docs()), RULES)
def test_mutated_upload_events(doc: Any, rule: TenantRule) -> None:
    """UploadEvents with members deleted, replaced or added (default 200 inputs, about 1 s)."""
    outcome(dump(doc).encode(), rule)


@fuzz_settings(200)
@given(mutated(notification_docs()), RULES)
def test_mutated_notifications(doc: Any, rule: TenantRule) -> None:
    """S3/MinIO notifications, mutated (default 200 inputs, about 1 s)."""
    outcome(dump(doc).encode(), rule)


@fuzz_settings(300)
@given(header_lists, st.text(max_size=8))
def test_trace_from_any_headers(headers: Any, event_id: str) -> None:
    """Headers of any shape and type give a valid trace (default 300 inputs, well under a
    second)."""
    trace = trace_from_headers(headers, event_id)
    assert len(trace.trace_id) == 32 and int(trace.trace_id, 16) > 0
    assert trace.parent_span is None or len(trace.parent_span) == 16


@fuzz_settings(150)
@given(upload_docs())
def test_valid_upload_events_round_trip(doc: dict[str, Any]) -> None:
    """A valid UploadEvent parses to itself, and its JSON parses again to the same event
    (default 150 inputs, under a second)."""
    parsed = outcome(json.dumps(doc).encode(), TenantRule())
    assert parsed is not None
    (event,) = parsed.events
    assert (event.event_id, event.tenant_id) == (doc["event_id"], doc["tenant_id"])
    assert (event.object.bucket, event.object.key) == (BUCKET, doc["object"]["key"])
    assert event.object.size == doc["object"].get("size")
    assert event.attributes == doc.get("attributes", {})
    assert event.context.model_dump(exclude_none=True) == doc.get("context", {})
    again = outcome(event.model_dump_json().encode(), TenantRule())
    assert again is not None and again.events == [event]


@fuzz_settings(150)
@given(notification_docs())
def test_valid_notifications_round_trip(doc: dict[str, Any]) -> None:
    """Every content-writing ObjectCreated record (Put, Post, Copy, CompleteMultipartUpload) of
    a valid notification becomes one event, the others (tag or retention changes too) are
    skipped; each event's JSON parses again to the same event (default 150 inputs, under a
    second)."""
    parsed = outcome(json.dumps(doc).encode(), TenantRule())
    assert parsed is not None
    records = doc.get("Records")
    if records is None:
        assert (parsed.events, parsed.skipped_records) == ([], 1)
        return
    content = ("Put", "Post", "Copy", "CompleteMultipartUpload")
    created = [
        r
        for r in records
        if r["eventName"].removeprefix("s3:") in [f"ObjectCreated:{c}" for c in content]
    ]
    assert len(parsed.events) == len(created)
    assert parsed.skipped_records == len(records) - len(created)
    for event, record in zip(parsed.events, created, strict=True):
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
        assert (event.object.bucket, event.object.key) == (BUCKET, key)
        assert event.tenant_id == key.split("/", 1)[0] and event.tenant_id in TENANTS
        time = record.get("eventTime")
        assert event.event_id == derive_event_id(
            BUCKET,
            key,
            obj.get("versionId") or None,
            obj.get("sequencer") or None,
            etag=obj.get("eTag") or None,
            event_time=time if isinstance(time, str) else None,
        )
        again = outcome(event.model_dump_json().encode(), TenantRule())
        assert again is not None and again.events == [event]


@fuzz_settings(200)
@given(mutated(st.one_of(eventbridge_docs(), sns_docs())), RULES)
def test_mutated_eventbridge_and_sns(doc: Any, rule: TenantRule) -> None:
    """EventBridge events and SNS envelopes, mutated (default 200 inputs, about 2 s)."""
    outcome(dump(doc).encode(), rule)


@fuzz_settings(150)
@given(eventbridge_docs())
def test_valid_eventbridge_events_round_trip(doc: dict[str, Any]) -> None:
    """An "Object Created" event whose reason writes content becomes one event for its key as
    sent; any other is skipped (default 150 inputs, under a second)."""
    parsed = outcome(json.dumps(doc).encode(), TenantRule())
    assert parsed is not None
    detail = doc["detail"]
    if doc["detail-type"] != "Object Created" or detail.get("reason") not in EVENTBRIDGE_REASONS:
        assert (parsed.events, parsed.skipped_records) == ([], 1)
        return
    (event,) = parsed.events
    obj = detail["object"]
    assert (event.object.bucket, event.object.key) == (BUCKET, obj["key"])
    assert event.tenant_id == obj["key"].split("/", 1)[0] and event.tenant_id in TENANTS
    assert (event.object.size, event.object.etag) == (obj["size"], obj.get("etag") or None)
    assert event.event_id == derive_event_id(
        BUCKET,
        obj["key"],
        obj.get("version-id") or None,
        obj.get("sequencer") or None,
        etag=obj.get("etag") or None,
        event_time=doc["time"],
    )


@fuzz_settings(150)
@given(sns_docs())
def test_sns_envelopes_hold_what_raw_delivery_sends(doc: dict[str, Any]) -> None:
    """An SNS envelope yields what its Message alone yields (default 150 inputs, under a
    second)."""
    wrapped = outcome(json.dumps(doc).encode(), TenantRule())
    assert wrapped is not None
    assert wrapped == outcome(doc["Message"].encode(), TenantRule())
