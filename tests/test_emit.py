from __future__ import annotations

import os
import random
import re
from datetime import UTC, datetime

from moderator.emit.records import dlq_output, new_span_id, trace_from_headers, verdict_outputs
from moderator.events.verdict import (
    AuditRecord,
    InputCoords,
    PolicyRef,
    Verdict,
    VerdictObject,
)


def make_verdict() -> tuple[Verdict, AuditRecord]:
    v = Verdict(
        event_id="e1",
        tenant_id="acme",
        object=VerdictObject(bucket="uploads", key="acme/a.jpg"),
        decision="allow",
        assessment=None,
        policy=PolicyRef(tenant_id="acme", surface="post", version="abc"),
        model=None,
        decided_at=datetime(2026, 11, 29, 2, 0, 1, tzinfo=UTC),
        trace_id="0" * 31 + "1",
    )
    a = AuditRecord(
        verdict=v,
        uploaded_at=None,
        context={},
        input=InputCoords(topic="uploads", partition=0, offset=1),
        instance_id="i",
        package_version="0",
        policy_hash="h",
        prompt_sha256=None,
    )
    return v, a


def test_verdict_and_audit_carry_cloudevents_headers() -> None:
    v, a = make_verdict()
    trace = trace_from_headers(
        [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], "e1"
    )
    verdict, audit = verdict_outputs(
        v, a, verdicts_topic="vt", audit_topic="at", source="/moderator/g", trace=trace
    )
    assert (verdict.topic, audit.topic) == ("vt", "at")
    assert verdict.key == audit.key == b"acme:uploads/acme/a.jpg"
    hv, ha = dict(verdict.headers), dict(audit.headers)
    assert hv["ce_id"] == b"e1/verdict" and ha["ce_id"] == b"e1/audit"
    assert hv["ce_type"] == b"moderator.verdict.v1" and ha["ce_type"] == b"moderator.audit.v1"
    assert hv["ce_specversion"] == b"1.0" and hv["content-type"] == b"application/json"
    assert hv["ce_time"] == b"2026-11-29T02:00:01Z"
    assert hv["ce_subject"] == b"uploads/acme/a.jpg"
    tp = hv["traceparent"].decode().split("-")
    assert tp[1] == "4bf92f3577b34da6a3ce929d0e0e4736"  # same trace
    assert tp[2] != "00f067aa0ba902b7"  # our own span
    assert b'"schema":"moderator.verdict/v1"' in verdict.value  # type: ignore[operator]


def test_span_ids_are_random_non_zero_hex() -> None:
    ids = [new_span_id() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) and i != "0" * 16 for i in ids)
    assert len(set(ids)) == len(ids)
    random.seed(7)
    first = new_span_id()
    random.seed(7)
    assert new_span_id() == first  # drawn from the random module's generator


def test_a_forked_child_draws_other_span_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next span id, then out without running pytest's exit code
        os.close(read)
        os.write(write, new_span_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{16}", child) and child != new_span_id()


def test_trace_without_header_is_derived_from_event_id() -> None:
    assert trace_from_headers(None, "e1").trace_id == trace_from_headers([], "e1").trace_id
    assert trace_from_headers(None, "e1").trace_id != trace_from_headers(None, "e2").trace_id
    bad = trace_from_headers([("traceparent", b"garbage")], "e1")
    assert bad.trace_id == trace_from_headers(None, "e1").trace_id


def test_dlq_keeps_original_bytes_and_adds_error_headers() -> None:
    rec = dlq_output(
        dlq_topic="dlq",
        key=b"k",
        value=b"\xffjunk",
        code="malformed_event",
        message="not JSON",
        source_topic="uploads",
        partition=3,
        offset=42,
        headers=[("x", b"y")],
    )
    assert rec.value == b"\xffjunk" and rec.key == b"k"
    h = dict(rec.headers)
    assert h["moderator.error.code"] == b"malformed_event"
    assert h["moderator.source.partition"] == b"3"
    assert h["moderator.source.offset"] == b"42"
    assert h["x"] == b"y"
