"""The whole service on the embedded broker and S3 server: 500 events, three tenants, every
kind of bad input, and the consumer keeps going."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from moderator.dev.samples import corrupt_bytes, make_sample, oversized_bytes
from moderator.dev.stack import EmbeddedStack
from moderator.policy.bundled import write_default_policy
from moderator.service import build_pipeline
from moderator.settings import load_settings
from service_support import ServiceThread

TENANTS = ("acme", "kids", "news")
BUCKET = "uploads"
LIMIT = 150_000


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedStack]:
    with EmbeddedStack(buckets=(BUCKET,)) as stack:
        yield stack


def _read_all(bootstrap: str, topic: str, want: int, timeout: float) -> list[Any]:
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in reader.consume(500, 0.2) if m.error() is None]
            out.extend(batch)
            if batch:
                idle_since = time.monotonic()
            elif len(out) >= want and time.monotonic() - idle_since > 1.5:
                break  # everything expected arrived and nothing more came for a while
    finally:
        reader.close()
    return out


def test_500_events_three_tenants_with_bad_input(
    embedded: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in embedded.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    policies = tmp_path / "policies"
    policies.mkdir()
    write_default_policy(policies)
    (policies / "acme.yaml").write_text("on_error: review\n")
    (policies / "kids.yaml").write_text("on_error: block\n")
    (policies / "news.yaml").write_text("on_error: {default: review, object_not_found: allow}\n")
    run_id = uuid.uuid4().hex[:8]
    topics = {t: f"{t}-{run_id}" for t in ("uploads", "verdicts", "audit", "dlq")}
    settings = load_settings(
        overrides={
            "engine.kind": "fake",
            "engine.fake.failure_rate": 0.02,
            "engine.retries": 0,
            "kafka.bootstrap_servers": embedded.bootstrap_servers,
            "kafka.delivery": "at_least_once",
            "kafka.group_id": f"moderator-{run_id}",
            "kafka.commit_interval_ms": 200,
            **{f"kafka.topics.{k}": v for k, v in topics.items()},
            "s3.endpoint_url": embedded.s3_endpoint_url,
            "s3.region": "us-east-1",
            "fetch.max_object_bytes": LIMIT,
            "policies.dir": policies,
            "log.level": "warning",
        }
    )

    rng = random.Random(5)
    s3 = embedded.s3_client()
    producer = Producer({"bootstrap.servers": embedded.bootstrap_servers})
    expected: dict[str, str] = {}  # event id -> expected error code ("" = judged)
    malformed: list[bytes] = []
    uploads: list[tuple[str, bytes]] = []
    messages: list[bytes] = []
    for i in range(500):
        tenant = TENANTS[i % 3]
        key = f"{tenant}/{run_id}/obj-{i}"
        roll = rng.random()
        if roll < 0.05:
            value = rng.choice([b"{not json", b'{"event_id": "x"}', b"\x00\xff", b"[]"])
            value += f" #{i}".encode()
            malformed.append(value)
            messages.append(value)
            continue
        if roll < 0.10:
            expected[f"ev-{i}"] = "object_not_found"
        elif roll < 0.12:
            uploads.append((key, corrupt_bytes(i)))
            expected[f"ev-{i}"] = "corrupt_image"
        elif roll < 0.13:
            uploads.append((key, oversized_bytes(LIMIT + 10_000, i)))
            expected[f"ev-{i}"] = "object_too_large"
        else:
            kind = ("jpeg", "png", "gif", "webp")[i % 4]
            uploads.append((key, make_sample(kind, i, size=(96, 72)).data))
            expected[f"ev-{i}"] = ""
        event = {
            "event_id": f"ev-{i}",
            "tenant_id": tenant,
            "object": {"bucket": BUCKET, "key": key},
        }
        messages.append(json.dumps(event).encode())
    # one S3 notification with two created objects and one deletion (skipped)
    notif_keys = [f"acme/{run_id}/notified-{j}.png" for j in range(2)]
    for j, key in enumerate(notif_keys):
        uploads.append((key, make_sample("png", 10_000 + j, size=(64, 64)).data))
    records = [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {"key": k}}}
        for k in notif_keys
    ] + [
        {
            "eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": "x"}},
        }
    ]
    messages.append(json.dumps({"Records": records}).encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), uploads))
    for value in messages:
        producer.produce(topics["uploads"], value=value)
    producer.flush(30)

    n_verdicts = len(expected) + len(notif_keys)
    with ServiceThread(settings, build_pipeline(settings), join_s=30) as service:
        verdicts = _read_all(embedded.bootstrap_servers, topics["verdicts"], n_verdicts, 120)
        audits = _read_all(embedded.bootstrap_servers, topics["audit"], n_verdicts, 30)
        dlq = _read_all(embedded.bootstrap_servers, topics["dlq"], len(malformed), 30)
        assert service.alive, f"the consumer stopped: {service.errors}"
    assert not service.errors

    docs = [json.loads(m.value()) for m in verdicts]
    by_id = Counter(d["event_id"] for d in docs)
    assert len(by_id) == n_verdicts
    assert max(by_id.values()) == 1, "a well-formed event got more than one verdict"
    got = {d["event_id"]: d for d in docs}
    for event_id, code in expected.items():
        verdict = got[event_id]
        if code:
            assert verdict["error"]["code"] == code, verdict
            assert verdict["assessment"] is None
        elif verdict["error"] is not None:
            assert verdict["error"]["code"] == "engine_error"  # the fake engine's failure rate
        else:
            assert verdict["assessment"]["rating"] in ("Safe", "Unsafe")
            assert verdict["model"]["smoke_test"] is True
            assert verdict["object"]["sha256"] and verdict["object"]["format"]
    # on_error per tenant
    for d in docs:
        if d["error"] and d["error"]["code"] == "corrupt_image":
            assert d["decision"] == ("block" if d["tenant_id"] == "kids" else "review")
        if d["error"] and d["error"]["code"] == "object_not_found" and d["tenant_id"] == "news":
            assert d["decision"] == "allow"
    engine_errors = sum(1 for d in docs if d["error"] and d["error"]["code"] == "engine_error")
    assert 0 < engine_errors < 40
    notified = [d for d in docs if d["event_id"].startswith("s3-")]
    assert sorted(d["object"]["key"] for d in notified) == sorted(notif_keys)

    audit_ids = Counter(json.loads(m.value())["verdict"]["event_id"] for m in audits)
    assert set(audit_ids) == set(by_id) and max(audit_ids.values()) == 1
    for m in verdicts[:5]:
        headers = dict(m.headers())
        assert headers["ce_type"] == b"moderator.verdict.v1"
        assert headers["ce_id"].endswith(b"/verdict")
        assert headers["traceparent"].startswith(b"00-")

    assert sorted(m.value() for m in dlq) == sorted(malformed)
    for m in dlq:
        headers = dict(m.headers())
        assert headers["moderator.error.code"] == b"malformed_event"
        assert headers["moderator.source.topic"] == topics["uploads"].encode()
        assert int(headers["moderator.source.offset"]) >= 0
