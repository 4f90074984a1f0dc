"""No input makes an output record too large for Kafka (moderator.emit.records.MAX_RECORD_BYTES).

A record over the producer's `message.max.bytes` fails at `produce`, and with it the whole
checkpoint, at every retry: the consumer would abort and redo the same transaction for ever,
for every tenant. The in-memory broker's producer refuses such a record as librdkafka does, so
these tests fail the way the service would. The inputs that could do it: a message over the
DLQ's room, an event whose context the audit record copies, a model that writes on, a policy
whose document every audit record carries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moderator.dev.openai.server import OpenAITestServer, ScriptedBackend
from moderator.emit.records import MAX_RECORD_BYTES, dlq_output, record_bytes
from moderator.events.parse import MalformedMessage, parse_message
from moderator.fetch.store import InMemoryObjectStore
from moderator.ingest.memory.broker import MemoryBroker
from moderator.policy.check import check
from moderator.settings import TenancySettings
from tests.harness import BUCKET, Instance, png, settings_for, wait_for, write_policies
from tests.test_openai_engine import MODEL

LONG_RATIONALE = "r" * 1_200_000


def dlq(value: bytes, key: bytes | None = b"k") -> bytes | None:
    record = dlq_output(
        dlq_topic="moderation.dlq",
        key=key,
        value=value,
        code="malformed_event",
        message="message value is too large",
        source_topic="uploads",
        partition=2,
        offset=7,
    )
    assert record_bytes(record) <= MAX_RECORD_BYTES - 1024
    return record.value


def headers_of(value: bytes, key: bytes | None = b"k") -> dict[str, bytes]:
    record = dlq_output(
        dlq_topic="d", key=key, value=value, code="c", message="m", source_topic="u",
        partition=0, offset=0,
    )  # fmt: skip
    return dict(record.headers)


def test_a_dlq_record_keeps_a_message_that_fits_unchanged() -> None:
    value = b"x" * 900_000
    assert dlq(value) == value
    assert "moderator.source.value_bytes" not in headers_of(value)


def test_a_dlq_record_cuts_a_value_too_large_and_says_how_large_it_was() -> None:
    value = bytes(range(256)) * 5000  # 1,280,000 bytes
    kept = dlq(value)
    assert kept is not None and value.startswith(kept) and len(kept) > 990_000
    assert headers_of(value)["moderator.source.value_bytes"] == b"1280000"


def test_a_dlq_record_cuts_a_key_too_large_as_well() -> None:
    key, value = b"k" * 800_000, b"v" * 800_000
    headers = headers_of(value, key)
    assert headers["moderator.source.key_bytes"] == b"800000"
    assert headers["moderator.source.value_bytes"] == b"800000"
    dlq(value, key)


def event(**over: object) -> dict[str, object]:
    return {
        "event_id": "e-1",
        "tenant_id": "acme",
        "object": {"bucket": BUCKET, "key": "acme/a.png"},
        **over,
    }


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"context": {"surface": "default", "notes": "n" * 20_000}}, "context"),
        ({"object": {"bucket": BUCKET, "key": "acme/a.png", "etag": "e" * 2000}}, "etag"),
        ({"object": {"bucket": BUCKET, "key": "acme/a.png", "version_id": "v" * 2000}}, "version"),
        ({"object": {"bucket": BUCKET, "key": "a/a.png", "content_type": "t" * 2000}}, "content"),
    ],
)
def test_event_fields_the_records_copy_are_bounded(fields: dict[str, object], named: str) -> None:
    with pytest.raises(MalformedMessage, match=named):
        parse_message(json.dumps(event(**fields)).encode(), None)


def test_a_small_context_of_its_own_is_kept() -> None:
    parsed = parse_message(json.dumps(event(context={"notes": "n" * 1000})).encode(), None)
    assert parsed.events[0].context.model_extra == {"notes": "n" * 1000}


def test_a_policy_too_large_for_the_audit_records_is_refused(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies")
    text = "a long text the model reads " * 12_000  # 336,000 characters
    (policies / "acme.yaml").write_text(
        f"categories:\n  O1:\n    mode: allowed\n    allowed_text: {text!r}\n"
    )
    [message] = check(policies, TenancySettings()).errors
    assert message.startswith(str(policies / "acme.yaml"))
    assert "the compiled policy of acme/default is" in message and "(limit 262144)" in message


def test_oversized_inputs_and_a_long_model_answer_end_in_outputs_and_commits(
    tmp_path: Path,
) -> None:
    answer = json.dumps({"rating": "Safe", "category": "NA: None applying", "rationale": ""})
    answer = answer.replace('"rationale": ""', f'"rationale": "{LONG_RATIONALE}"')
    broker, store = MemoryBroker(), InMemoryObjectStore()
    broker.create_topic("uploads", 2)
    store.put(BUCKET, "acme/a.png", png(1))
    broker.produce_plain("uploads", json.dumps(event()).encode(), partition=0)
    poison = [
        json.dumps(event(event_id="e-2", attributes={"x": "x" * 1_200_000})).encode(),
        b"x" * 1_010_000,
        json.dumps(event(event_id="e-3", context={"notes": "n" * 995_000})).encode(),
    ]
    for value in poison:
        broker.produce_plain("uploads", value, partition=1)
    with OpenAITestServer(ScriptedBackend(answer), model=MODEL) as server:
        settings = settings_for(
            write_policies(tmp_path / "policies"),
            **{"engine.kind": "openai", "engine.base_url": server.url, "engine.model": MODEL},
        )
        instance = Instance(broker, store, settings).start()
        try:
            wait_for(
                lambda: (
                    broker.committed_offset("g", "uploads", 0) == 1
                    and broker.committed_offset("g", "uploads", 1) == len(poison)
                ),
                what="every input committed",
            )
        finally:
            instance.shutdown()
    assert instance.error is None
    [verdict] = [json.loads(r.value or b"") for r in broker.records("moderation.verdicts")]
    [audit] = [json.loads(r.value or b"") for r in broker.records("moderation.audit")]
    rationale = verdict["assessment"]["rationale"]
    assert rationale.startswith("rrr") and rationale.endswith(" [cut: 1200000 characters]")
    assert audit["raw_output"].endswith(f" [cut: {len(answer)} characters]")
    dead = broker.records("moderation.dlq")
    assert len(dead) == len(poison)
    for record in [
        *dead,
        *broker.records("moderation.verdicts"),
        *broker.records("moderation.audit"),
    ]:
        size = len(record.key or b"") + len(record.value or b"")
        assert size + sum(len(k) + len(v) for k, v in record.headers or []) <= MAX_RECORD_BYTES


def test_a_dlq_record_keeps_the_message_s_own_headers_but_none_named_like_ours() -> None:
    record = dlq_output(
        dlq_topic="d", key=b"k", value=b"{", code="malformed_event", message="m",
        source_topic="u", partition=0, offset=3,
        headers=[("traceparent", b"00-ab"), ("moderator.error.code", b"none"), ("x", None)],
    )  # fmt: skip
    names = [name for name, _ in record.headers]
    assert names[0] == "traceparent" and names.count("moderator.error.code") == 1
    assert dict(record.headers)["moderator.error.code"] == b"malformed_event"
    assert "x" not in names


def test_a_dlq_record_drops_the_message_s_headers_when_they_are_too_many() -> None:
    many = [(f"h{i}", b"v" * 100) for i in range(200)]
    record = dlq_output(
        dlq_topic="d", key=b"k", value=b"{", code="malformed_event", message="m",
        source_topic="u", partition=0, offset=3, headers=many,
    )  # fmt: skip
    assert not any(name.startswith("h") for name, _ in record.headers)
    assert (
        dict(record.headers)["moderator.source.headers_bytes"] == b"20690"
    )  # names h0..h199 and 100-byte values
